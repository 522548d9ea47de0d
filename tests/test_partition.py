"""Tag, TSV and singleton partitions of a target dictionary, including special and odd tokens."""

import re

import pytest
import torch

from fairseq_halo import partition as partition_module
from fairseq_halo.partition import (
    NO_CLASS,
    build_partition,
    gold_classes,
    singleton_partition,
    tag_partition,
    tsv_partition,
)
from fairseq_halo.predpatt import ARGUMENT, PREDICATE

# Every token kind a linearized PredPatt target dictionary can hold, with its class under the
# documented rule: brackets and </s> have a class, <s>, <pad> and madeupwordNNNN have none, and a
# word's class follows the suffix after its last colon.
TAG_CASES = [
    ("^((", ARGUMENT),
    ("))$", ARGUMENT),
    ("^(((", PREDICATE),
    (")))$", PREDICATE),
    ("^(((:a", PREDICATE),
    (")))$:a", PREDICATE),
    ("SOMETHING:a=", ARGUMENT),
    ("is/are:p_h", PREDICATE),
    ("sat:p", PREDICATE),
    ("on:p", PREDICATE),
    ("cat:a_h", ARGUMENT),
    ("the:a", ARGUMENT),
    ("10:30:a", ARGUMENT),
    ("10:30:p", PREDICATE),
    ("http://x.org:8080/a:a", ARGUMENT),
    (":p:a", ARGUMENT),
    (":a:p", PREDICATE),
    ("untagged", None),
    ("w1:x", None),
    ("madeupword0000", None),
    ("<s>", None),
    ("<pad>", None),
    ("</s>", PREDICATE),
    ("<unk>", ARGUMENT),
    ("<unk>:p_h", PREDICATE),
    ("<unk>:a", ARGUMENT),
]
# The four special symbols and the first padding symbol are added by fairseq's Dictionary.
ADDED_BY_FAIRSEQ = {"<s>", "<pad>", "</s>", "<unk>", "madeupword0000"}
REAL_SYMBOLS = [token for token, _ in TAG_CASES if token not in ADDED_BY_FAIRSEQ]


@pytest.fixture
def tag_dictionary(build_dictionary):
    # 21 real symbols + 4 special ones, padded to a multiple of 8 with madeupword0000..0006.
    return build_dictionary(REAL_SYMBOLS)


def class_of(partition, dictionary, token):
    index = dictionary.index(token)
    class_id = int(partition.token_class[index])
    return None if class_id == NO_CLASS else partition.class_names[class_id]


def write_tsv(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# Tag partition


def test_tag_dictionary_has_padding_symbols(tag_dictionary):
    # 25 symbols are padded to 32 by finalize(padding_factor=8).
    assert len(tag_dictionary) == 32
    assert tag_dictionary.index("madeupword0000") != tag_dictionary.unk()


@pytest.mark.parametrize("token, expected", TAG_CASES)
def test_tag_partition_token_class(tag_dictionary, token, expected):
    partition = tag_partition(tag_dictionary)

    assert class_of(partition, tag_dictionary, token) == expected


def test_tag_partition_class_names(tag_dictionary):
    partition = tag_partition(tag_dictionary)

    assert partition.class_names == [PREDICATE, ARGUMENT]
    assert partition.kind == "tag"


def test_tag_partition_class_sizes(tag_dictionary):
    # Predicates: 4 brackets, is/are:p_h, sat:p, on:p, 10:30:p, :a:p, </s>, <unk>:p_h = 11.
    # Arguments: ^((, ))$, SOMETHING:a=, cat:a_h, the:a, 10:30:a, the URL, :p:a, <unk>, <unk>:a
    # = 10. Without a class: untagged, w1:x, <s>, <pad>, 7 madeupword symbols = 11.
    partition = tag_partition(tag_dictionary)

    assert partition.class_sizes() == [11, 10]
    assert int((partition.token_class == NO_CLASS).sum()) == 11


def test_tag_partition_unk_predicate_switch(tag_dictionary):
    partition = tag_partition(tag_dictionary, unk_class=PREDICATE)

    assert class_of(partition, tag_dictionary, "<unk>") == PREDICATE
    assert class_of(partition, tag_dictionary, "<unk>:a") == ARGUMENT
    assert class_of(partition, tag_dictionary, "<unk>:p_h") == PREDICATE


def test_tag_partition_invalid_unk_class(tag_dictionary):
    with pytest.raises(ValueError, match="--halo-unk-class 'nothing' is invalid"):
        tag_partition(tag_dictionary, unk_class="nothing")


def test_tag_partition_without_predicates_rejected(build_dictionary):
    # </s> is a predicate token by rule, but it must not hide that no word is tagged :p.
    dictionary = build_dictionary(["^((", "))$", "w1:a", "w2:a_h"])

    with pytest.raises(ValueError, match="'predicate' without any token"):
        build_partition(dictionary, "tag")


def test_tag_partition_without_arguments_rejected(build_dictionary):
    # Plain <unk> is an argument token by rule, but it must not hide that no word is tagged :a.
    dictionary = build_dictionary(["^(((", ")))$", "w3:p", "w6:p_h"])

    with pytest.raises(ValueError, match="'argument' without any token"):
        build_partition(dictionary, "tag")


def test_tag_partition_untagged_dictionary_rejected(build_dictionary):
    dictionary = build_dictionary(["the", "cat", "sat"])

    with pytest.raises(ValueError, match="linearized PredPatt") as raised:
        build_partition(dictionary, "tag")
    assert "'predicate'" in str(raised.value)
    assert "'argument'" in str(raised.value)


def test_build_partition_tag_accepts_toy(toy_task):
    partition = build_partition(toy_task.target_dictionary, "tag")

    # ^((( )))$ w3 w6 w9 w12 </s> are predicates. The 8 other words and <unk> are arguments.
    assert partition.class_sizes() == [7, 9]


# TSV partition


def test_tsv_partition_several_classes(tmp_path, build_dictionary):
    dictionary = build_dictionary(["w1:a", "w2:a", "w3:p", "w4:a", "10:30:a"])
    path = write_tsv(tmp_path / "classes.tsv", [
        "w1:a\tnoun", "w2:a\tverb", "", "w3:p\tverb", "10:30:a\ttime", "absent\tnoun",
        "<pad>\tnoun",
    ])
    partition = tsv_partition(dictionary, str(path))

    # Class ids follow the sorted class names.
    assert partition.class_names == ["noun", "time", "verb"]
    assert class_of(partition, dictionary, "w1:a") == "noun"
    assert class_of(partition, dictionary, "w2:a") == "verb"
    assert class_of(partition, dictionary, "w3:p") == "verb"
    assert class_of(partition, dictionary, "10:30:a") == "time"
    # Tokens missing from the file, and <pad> even when listed, get no class.
    assert class_of(partition, dictionary, "w4:a") is None
    assert class_of(partition, dictionary, "<pad>") is None
    assert partition.class_sizes() == [1, 1, 2]


@pytest.mark.parametrize("bad_line", ["w1:a", "w1:a\t", "\tnoun", "w1:a\tnoun\textra"])
def test_tsv_invalid_line_names_location(tmp_path, build_dictionary, bad_line):
    dictionary = build_dictionary(["w1:a", "w2:a"])
    path = write_tsv(tmp_path / "classes.tsv", ["w2:a\tnoun", "w1:a\tverb", bad_line])

    with pytest.raises(ValueError, match=re.escape(f"{path}:3: expected 'token<TAB>class'")):
        tsv_partition(dictionary, str(path))


def test_tsv_conflicting_classes_name_line(tmp_path, build_dictionary):
    dictionary = build_dictionary(["w1:a", "w2:a"])
    path = write_tsv(tmp_path / "classes.tsv", ["w1:a\tnoun", "w2:a\tnoun", "w1:a\tverb"])

    with pytest.raises(ValueError, match=r"classes.tsv:3: token 'w1:a' is given class 'verb'"):
        tsv_partition(dictionary, str(path))


def test_tsv_empty_file_rejected(tmp_path, build_dictionary):
    dictionary = build_dictionary(["w1:a"])
    path = write_tsv(tmp_path / "classes.tsv", ["", "  "])

    with pytest.raises(ValueError, match="classes.tsv: the class file is empty"):
        tsv_partition(dictionary, str(path))


def test_tsv_empty_class_rejected(tmp_path, build_dictionary):
    # The class 'verb' lists only a token that is not in the dictionary.
    dictionary = build_dictionary(["w1:a", "w2:a"])
    path = write_tsv(tmp_path / "classes.tsv", ["w1:a\tnoun", "w2:a\tnoun", "absent\tverb"])

    with pytest.raises(ValueError, match="leaves class\\(es\\) 'verb' without any token") as raised:
        build_partition(dictionary, "tsv", class_file=str(path))
    assert str(path) in str(raised.value)


def test_tsv_partition_needs_class_file(tag_dictionary):
    with pytest.raises(ValueError, match="--halo-class-file"):
        build_partition(tag_dictionary, "tsv")


def test_tsv_missing_file_raises(tmp_path, tag_dictionary):
    with pytest.raises(FileNotFoundError):
        build_partition(tag_dictionary, "tsv", class_file=str(tmp_path / "absent.tsv"))


# Singleton partition and shared helpers


def test_singleton_partition_one_token_each(tag_dictionary):
    partition = singleton_partition(tag_dictionary)

    # 32 symbols less <s>, <pad> and 7 madeupword symbols = 23 classes of one token.
    assert partition.num_classes == 23
    assert partition.class_sizes() == [1] * 23
    assert partition.is_singleton


@pytest.mark.parametrize("token, expected_classed", [
    ("</s>", True), ("<unk>", True), (":p:a", True), ("untagged", True),
    ("<s>", False), ("<pad>", False), ("madeupword0000", False),
])
def test_singleton_partition_special_symbols(tag_dictionary, token, expected_classed):
    partition = singleton_partition(tag_dictionary)
    class_name = class_of(partition, tag_dictionary, token)

    assert (class_name is not None) == expected_classed
    if expected_classed:
        assert class_name == token


def test_build_partition_unknown_kind(tag_dictionary):
    with pytest.raises(ValueError, match="--halo-partition 'clusters' is invalid"):
        build_partition(tag_dictionary, "clusters")


def test_gold_classes_maps_target_ids(tag_dictionary):
    partition = tag_partition(tag_dictionary)
    ids = [tag_dictionary.index(token) for token in ("sat:p", "the:a", "<pad>", "</s>")]
    target = torch.tensor([ids[:2], ids[2:]])  # (B=2, T=2)

    # predicate = 0, argument = 1, no class = -1.
    assert gold_classes(partition, target).tolist() == [[0, 1], [NO_CLASS, 0]]


def test_class_members_disjoint_and_complete(tag_dictionary):
    partition = tag_partition(tag_dictionary)
    members = torch.cat(partition.class_members())

    assert len(set(members.tolist())) == members.numel()
    assert members.numel() == int((partition.token_class >= 0).sum())


def test_unclassed_symbols_lists_real_tokens(tag_dictionary):
    partition = tag_partition(tag_dictionary)

    unclassed = partition_module.unclassed_symbols(tag_dictionary, partition)

    # <s>, <pad> and the madeupword symbols are left out as special.
    assert sorted(unclassed) == ["untagged", "w1:x"]
