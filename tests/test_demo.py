"""Tests of the synthetic demo corpus: seeded, well formed, fully tagged, sized as asked."""

from collections import Counter

import pytest

from fairseq_halo import demo, predpatt

SIZES = {"train": 300, "valid": 50, "test": 50}


@pytest.fixture(scope="module")
def corpus():
    return demo.generate_corpus(SIZES, seed=7)


def all_pairs(corpus):
    return [pair for pairs in corpus.values() for pair in pairs]


def test_corpus_same_for_same_seed(corpus):
    assert demo.generate_corpus(SIZES, seed=7) == corpus


def test_corpus_differs_across_seeds(corpus):
    assert demo.generate_corpus(SIZES, seed=8)["train"] != corpus["train"]


def test_test_split_ignores_train_size(corpus):
    smaller = demo.generate_corpus({"train": 10, "valid": 50, "test": 50}, seed=7)
    assert smaller["test"] == corpus["test"]
    assert smaller["valid"] == corpus["valid"]


def test_corpus_split_sizes(corpus):
    assert {split: len(pairs) for split, pairs in corpus.items()} == SIZES


def test_targets_well_formed(corpus):
    for _, target in all_pairs(corpus):
        assert predpatt.is_well_formed(target.split()), target


def test_target_tokens_all_tagged(corpus):
    for _, target in all_pairs(corpus):
        untagged = [token for token in target.split() if predpatt.token_tag(token) is None]
        assert untagged == [], target


def test_every_bracket_token_occurs(corpus):
    tokens = Counter(token for _, target in all_pairs(corpus) for token in target.split())
    for token in predpatt.STRUCTURE_TOKENS:
        assert tokens[token] > 0, token
    assert any(predpatt.split_word(token)[1] == "a_h" for token in tokens)
    assert any(predpatt.split_word(token)[1] == "p_h" for token in tokens)


def test_sentences_have_several_predicates(corpus):
    counts = [target.split().count(predpatt.PRED_OPEN) for _, target in corpus["train"]]
    assert max(counts) >= 2


def test_source_lengths_in_range(corpus):
    lengths = [len(source.split()) for source, _ in all_pairs(corpus)]
    assert min(lengths) >= demo.MIN_SOURCE_TOKENS
    assert max(lengths) <= demo.MAX_SOURCE_TOKENS


def test_vocabularies_stay_small(corpus):
    source_vocab = {token for source, _ in all_pairs(corpus) for token in source.split()}
    target_vocab = {token for _, target in all_pairs(corpus) for token in target.split()}
    assert 50 <= len(source_vocab) <= 300
    assert 50 <= len(target_vocab) <= 300


def test_source_sentences_unique_across_splits(corpus):
    sources = [source for source, _ in all_pairs(corpus)]
    assert len(set(sources)) == len(sources)


def test_one_predicate_head_per_source_verb(corpus):
    # Every verb of the source heads exactly one predicate bracket of the target.
    verbs = {demo.LEXICON[word] for word in (*demo.TRANSITIVE_VERBS, *demo.INTRANSITIVE_VERBS,
                                             *demo.CLAUSAL_VERBS)}
    for source, target in all_pairs(corpus):
        source_verbs = sum(token in verbs for token in source.split())
        heads = sum(token.endswith(":p_h") for token in target.split())
        assert heads == source_verbs, (source, target)


def test_lexicon_words_distinct():
    words = list(demo.LEXICON.values())
    particles = {demo.SUBJECT, demo.OBJECT, demo.COMPLEMENTIZER, demo.RELATIVE, demo.AND}
    assert len(set(words)) == len(words)
    assert not particles & set(words)


def test_cli_writes_requested_sizes(tmp_path, capsys):
    output = tmp_path / "demo"
    status = demo.cli_main([str(output), "--train", "20", "--valid", "5", "--test", "6",
                            "--seed", "3"])
    assert status == 0
    assert "wrote train 20, valid 5, test 6 pairs" in capsys.readouterr().out
    for split, size in (("train", 20), ("valid", 5), ("test", 6)):
        for side in ("src", "tgt"):
            lines = (output / f"{split}.{side}").read_bytes().split(b"\n")
            assert lines[-1] == b""
            assert len(lines) - 1 == size


def test_cli_rejects_zero_size(tmp_path):
    with pytest.raises(SystemExit):
        demo.cli_main([str(tmp_path / "demo"), "--test", "0"])
