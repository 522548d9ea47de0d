"""Hand-computed cases for the BLEU, F1 and recoverability functions of fairseq_halo.metrics."""

import math
from collections import Counter
from pathlib import Path

import pytest
from sacrebleu.metrics import BLEU

from fairseq_halo import metrics, predpatt
from fairseq_halo.predpatt import ARGUMENT, PREDICATE

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# The worked example of docs/metrics.md.
DOC_REFERENCE = "^((( ^(( the:a cat:a_h ))$ sat:p_h on:p ^(( the:a mat:a_h ))$ )))$"
DOC_HYPOTHESIS = "^((( ^(( cat:a_h ))$ sat:p_h ^(( on:a the:a mat:a_h ))$ )))$"


def tokens(*lines):
    return [line.split() for line in lines]


def shared_case(name):
    path = SHARED / "cases" / name
    if not path.is_dir():
        pytest.skip(f"shared case folder {name} is not present")
    return path


# BLEU


def test_bleu_single_sentence_by_hand():
    # hyp w1..w6, ref w1..w5 w7 w8.
    # matched/total n-grams: 1-grams 5/6, 2-grams 4/5, 3-grams 3/4, 4-grams 2/3.
    # BP = exp(1 - 7/6); precisions multiply to 120/360 = 1/3.
    hyp = tokens("w1:a w2:a w3:p w4:a w5:a w6:p")
    ref = tokens("w1:a w2:a w3:p w4:a w5:a w7:a w8:a")
    result = metrics.corpus_bleu(hyp, ref)

    assert result.counts == (5, 4, 3, 2)
    assert result.totals == (6, 5, 4, 3)
    assert result.hypothesis_length == 6
    assert result.reference_length == 7
    assert result.brevity_penalty == pytest.approx(math.exp(1 - 7 / 6))
    assert result.score == pytest.approx(100 * math.exp(-1 / 6) * (1 / 3) ** 0.25)
    assert result.score == pytest.approx(64.3187, abs=1e-4)


def test_bleu_sums_ngram_counts_over_corpus():
    # Sentence 2 (hyp = ref = "x:a y:p") adds 1-grams 2/2 and 2-grams 1/1 to the counts above:
    # 1-grams 7/8, 2-grams 5/6, 3-grams 3/4, 4-grams 2/3; lengths 8 and 9, BP = exp(1 - 9/8).
    hyp = tokens("w1:a w2:a w3:p w4:a w5:a w6:p", "x:a y:p")
    ref = tokens("w1:a w2:a w3:p w4:a w5:a w7:a w8:a", "x:a y:p")
    result = metrics.corpus_bleu(hyp, ref)

    assert result.counts == (7, 5, 3, 2)
    assert result.totals == (8, 6, 4, 3)
    expected = 100 * math.exp(1 - 9 / 8) * (7 / 8 * 5 / 6 * 3 / 4 * 2 / 3) ** 0.25
    assert result.score == pytest.approx(expected)


def test_bleu_no_fourgram_match_is_zero():
    # 1-grams 4/4, 2-grams 1/3 (only a b), 3-grams 0/2, 4-grams 0/1: without smoothing BLEU is 0.
    result = metrics.corpus_bleu(tokens("a:a b:p c:a d:p"), tokens("a:a b:p d:p c:a"))

    assert result.counts == (4, 1, 0, 0)
    assert result.score == 0.0


def test_bleu_is_case_sensitive():
    result = metrics.corpus_bleu(tokens("The:a cat:a_h sat:p_h"), tokens("the:a cat:a_h sat:p_h"))

    assert result.counts == (2, 1, 0, 0)
    assert result.score == 0.0


def test_bleu_empty_hypotheses_score_zero():
    # No hypothesis token: brevity penalty 0. No token at all: no n-gram matches.
    assert metrics.corpus_bleu([[]], tokens("a:a b:p")).score == 0.0
    assert metrics.corpus_bleu([[], []], [[], []]).score == 0.0


def test_bleu_signature_names_settings():
    signature = metrics.corpus_bleu(tokens("a:a"), tokens("a:a")).signature

    assert "tok:none" in signature
    assert "smooth:none" in signature
    assert "case:mixed" in signature
    assert "eff:no" in signature


def test_bleu_tokenizer_case_flipped_tags():
    # hyp.txt flips the tag of every word of ref.txt, so no token matches.
    case = shared_case("bleu-tokenizer")
    hyp_lines = (case / "hyp.txt").read_text(encoding="utf-8").splitlines()
    ref_lines = (case / "ref.txt").read_text(encoding="utf-8").splitlines()
    result = metrics.corpus_bleu(tokens(*hyp_lines), tokens(*ref_lines))

    assert result.counts == (0, 0, 0, 0)
    assert result.score == 0.0

    # sacrebleu's default 13a tokenizer splits "w5:p" into "w5 : p" and gives credit.
    default = BLEU().corpus_score(hyp_lines, [ref_lines]).score
    assert default == pytest.approx(10.23, abs=0.01)


def test_bleu_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        metrics.corpus_bleu(tokens("a:a", "b:a"), tokens("a:a"))


# token F1


def test_token_f1_worked_example():
    # Predicate words: hyp {sat}, ref {sat, on}: overlap 1, P 1/1, R 1/2, F 2/3.
    # Argument words: hyp {cat, on, the, mat}, ref {the, cat, the, mat}: overlap 3 (one "the").
    hyp, ref = tokens(DOC_HYPOTHESIS), tokens(DOC_REFERENCE)
    predicate = metrics.token_f1(hyp, ref, PREDICATE)
    argument = metrics.token_f1(hyp, ref, ARGUMENT)

    assert (predicate.overlap, predicate.hypothesis_total, predicate.reference_total) == (1, 1, 2)
    assert predicate.precision == 1.0
    assert predicate.recall == 0.5
    assert predicate.f1 == pytest.approx(2 / 3)
    assert (argument.overlap, argument.hypothesis_total, argument.reference_total) == (3, 4, 4)
    assert argument.f1 == pytest.approx(0.75)


def test_token_f1_counts_repeated_words_once_each():
    # Multisets: hyp {a, a, a}, ref {a}: overlap min(3, 1) = 1, P 1/3, R 1/1.
    prf = metrics.token_f1(tokens("a:a a:a a:a_h"), tokens("a:a"), ARGUMENT)

    assert (prf.overlap, prf.hypothesis_total, prf.reference_total) == (1, 3, 1)
    assert prf.precision == pytest.approx(1 / 3)
    assert prf.recall == 1.0


def test_token_f1_micro_averages_sentences():
    # Sentence 1 overlap 1 of hyp 1 / ref 1; sentence 2 overlap 0 of hyp 3 / ref 1.
    # Micro: P = (1 + 0) / (1 + 3) = 1/4, R = (1 + 0) / (1 + 1) = 1/2. Macro P would be 1/2.
    prf = metrics.token_f1(tokens("a:p", "b:p c:p d:p"), tokens("a:p", "e:p"), PREDICATE)

    assert prf.precision == 0.25
    assert prf.recall == 0.5
    assert prf.f1 == pytest.approx(2 * 0.25 * 0.5 / 0.75)


def test_token_f1_ignores_brackets_and_clausal_marker():
    hyp = tokens("^((( ^(( ))$ SOMETHING:a= ^(((:a )))$:a )))$ <unk> plain")
    prf = metrics.token_f1(hyp, tokens("^((( )))$"), ARGUMENT)

    assert prf.hypothesis_total == 0
    assert prf.reference_total == 0
    assert prf.f1 == 0.0


def test_token_f1_strips_head_mark():
    prf = metrics.token_f1(tokens("cat:a_h sat:p"), tokens("cat:a sat:p_h"), ARGUMENT)

    assert prf.overlap == 1


def test_token_f1_wrong_tag_is_miss():
    # w5 is a predicate in the hypothesis and an argument in the reference.
    hyp, ref = tokens("w5:p"), tokens("w5:a")
    predicate = metrics.token_f1(hyp, ref, PREDICATE)
    argument = metrics.token_f1(hyp, ref, ARGUMENT)

    assert (predicate.overlap, predicate.hypothesis_total, predicate.reference_total) == (0, 1, 0)
    assert (argument.overlap, argument.hypothesis_total, argument.reference_total) == (0, 0, 1)


def test_token_f1_empty_reference_counts_false_positives():
    # Sentence 2 has an empty reference, so its two hypothesis words are false positives.
    prf = metrics.token_f1(tokens("a:a", "b:a c:a"), tokens("a:a", ""), ARGUMENT)

    assert (prf.overlap, prf.hypothesis_total, prf.reference_total) == (1, 3, 1)
    assert prf.precision == pytest.approx(1 / 3)
    assert prf.recall == 1.0


def test_token_f1_empty_hypothesis_is_miss():
    prf = metrics.token_f1(tokens("", "a:a"), tokens("b:a c:a", "a:a"), ARGUMENT)

    assert (prf.overlap, prf.hypothesis_total, prf.reference_total) == (1, 1, 3)
    assert prf.precision == 1.0
    assert prf.recall == pytest.approx(1 / 3)


def test_token_f1_zero_denominators_give_zero():
    prf = metrics.token_f1(tokens(""), tokens(""), PREDICATE)

    assert prf.precision == 0.0
    assert prf.recall == 0.0
    assert prf.f1 == 0.0


def test_token_f1_unbalanced_brackets_still_count():
    # Token F1 needs no parse: the words of an unclosed hypothesis count as usual.
    prf = metrics.token_f1(tokens("^((( w1:p_h"), tokens("^((( w1:p_h )))$"), PREDICATE)

    assert prf.f1 == 1.0


# mention F1


def test_dice_of_multisets():
    assert metrics.dice(Counter("ab"), Counter("ab")) == 1.0
    assert metrics.dice(Counter("aa"), Counter("a")) == pytest.approx(2 * 1 / 3)
    assert metrics.dice(Counter(), Counter()) == 0.0


def test_mentions_exclude_nested_words():
    spans = predpatt.parse(
        "^((( ^(( a:a_h ))$ b:p_h SOMETHING:a= ^(((:a ^(( c:a_h ))$ d:p_h )))$:a )))$".split()
    )

    assert metrics.mentions(spans, PREDICATE) == [Counter(["b"]), Counter(["d"])]
    assert metrics.mentions(spans, ARGUMENT) == [Counter(["a"]), Counter(["c"])]


def test_mention_f1_worked_example():
    # Argument mentions: hyp {cat}, {on, the, mat}; ref {the, cat}, {the, mat}.
    # Dice: {on,the,mat}-{the,mat} = 4/5, {cat}-{the,cat} = 2/3, {on,the,mat}-{the,cat} = 2/5.
    # Greedy takes 4/5, then 2/3: sum 22/15 over 2 system and 2 gold mentions.
    # Predicate mentions: hyp {sat}, ref {sat, on}: Dice 2/3 over 1 and 1.
    hyp, ref = tokens(DOC_HYPOTHESIS), tokens(DOC_REFERENCE)
    argument = metrics.mention_f1(hyp, ref, ARGUMENT)
    predicate = metrics.mention_f1(hyp, ref, PREDICATE)

    assert argument.overlap == pytest.approx(22 / 15)
    assert argument.precision == pytest.approx(11 / 15)
    assert argument.recall == pytest.approx(11 / 15)
    assert argument.f1 == pytest.approx(11 / 15)
    assert predicate.overlap == pytest.approx(2 / 3)
    assert predicate.f1 == pytest.approx(2 / 3)


def test_pair_mentions_best_dice_first():
    # s0 = {a, b}, s1 = {a}; g0 = {a}, g1 = {a, b, c, d}.
    # Dice: s1-g0 = 1, s0-g0 = 2/3, s0-g1 = 4/6, s1-g1 = 2/5. Greedy: (s1, g0), then (s0, g1).
    system = [Counter("ab"), Counter("a")]
    gold = [Counter("a"), Counter("abcd")]
    pairs = metrics.pair_mentions(system, gold)

    assert [(i, j) for i, j, _ in pairs] == [(1, 0), (0, 1)]
    assert sum(score for _, _, score in pairs) == pytest.approx(1 + 2 / 3)


def test_pair_mentions_uses_each_once():
    # Two identical system mentions {a} and one gold {a}: one pair, Dice 1.
    pairs = metrics.pair_mentions([Counter("a"), Counter("a")], [Counter("a")])

    assert pairs == [(0, 0, 1.0)]


def test_mention_f1_duplicate_mentions_lower_precision():
    # System mentions {a}, {a}; gold {a}: sum 1, P = 1/2, R = 1/1.
    hyp = tokens("^((( ^(( a:a_h ))$ ^(( a:a_h ))$ b:p_h )))$")
    ref = tokens("^((( ^(( a:a_h ))$ b:p_h )))$")
    prf = metrics.mention_f1(hyp, ref, ARGUMENT)

    assert prf.precision == 0.5
    assert prf.recall == 1.0


def test_mention_f1_malformed_hypothesis_has_none():
    # The hypothesis leaves its predicate bracket open: no mentions, so P = 0/0 = 0, R = 0/1.
    hyp = tokens("^((( ^(( a:a_h ))$ b:p_h")
    ref = tokens("^((( ^(( a:a_h ))$ b:p_h )))$")
    prf = metrics.mention_f1(hyp, ref, PREDICATE)

    assert (prf.overlap, prf.hypothesis_total, prf.reference_total) == (0, 0, 1)
    assert prf.f1 == 0.0


def test_mention_f1_malformed_reference_raises():
    hyp = tokens("a:a", "a:a")
    ref = tokens("^(( a:a_h ))$", "^(( a:a_h )))$")

    with pytest.raises(metrics.MalformedReference) as error:
        metrics.mention_f1(hyp, ref, ARGUMENT)
    assert error.value.index == 1


def test_mention_f1_empty_bracket_is_unmatched_mention():
    # The hypothesis argument bracket contains no word: one system mention with Dice 0.
    hyp = tokens("^((( ^(( ))$ b:p_h )))$")
    ref = tokens("^((( ^(( a:a_h ))$ b:p_h )))$")
    prf = metrics.mention_f1(hyp, ref, ARGUMENT)

    assert (prf.overlap, prf.hypothesis_total, prf.reference_total) == (0, 1, 1)


def test_mention_f1_empty_lines():
    # Sentence 1: empty hypothesis, one gold argument. Sentence 2: empty reference, one system
    # argument. Nothing pairs: P = 0/1, R = 0/1.
    hyp = tokens("", "^((( ^(( a:a_h ))$ b:p_h )))$")
    ref = tokens("^((( ^(( a:a_h ))$ b:p_h )))$", "")
    prf = metrics.mention_f1(hyp, ref, ARGUMENT)

    assert (prf.overlap, prf.hypothesis_total, prf.reference_total) == (0, 1, 1)
    assert metrics.mention_f1(tokens(""), tokens(""), ARGUMENT).f1 == 0.0


def test_mention_f1_repeated_words_in_mention():
    # Hyp mention {the, the, mat}, gold {the, mat}: Dice 2 * 2 / (3 + 2) = 4/5.
    hyp = tokens("^((( ^(( the:a the:a mat:a_h ))$ b:p_h )))$")
    ref = tokens("^((( ^(( the:a mat:a_h ))$ b:p_h )))$")

    assert metrics.mention_f1(hyp, ref, ARGUMENT).overlap == pytest.approx(4 / 5)


# recoverability


def test_recoverability_counts_well_formed():
    hyp = tokens(
        "^((( ^(( a:a_h ))$ b:p_h )))$",  # well formed
        "",  # empty: no bracket, so trivially well formed
        "^((( ^(( a:a_h ))$ b:p_h",  # bracket left open
        "^((( ^(( a:a_h b:a_h ))$ c:p_h )))$",  # two heads in one argument
        "a:a b:p",  # words outside any bracket, no span
    )
    result = metrics.recoverability(hyp)

    assert result.well_formed == 3
    assert result.total == 5
    assert result.score == pytest.approx(3 / 5)


def test_recoverability_no_hypotheses_is_zero():
    assert metrics.recoverability([]).score == 0.0
