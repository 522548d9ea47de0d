"""Tests of halo-prepare and its text checks.

Bad inputs fail with file and line and leave no output. The options drop, replace, reverse,
segment and replace rare words as documented."""

import json
import shutil
from pathlib import Path

import pytest

from fairseq_halo import corpus, predpatt
from fairseq_halo.prepare import cli_main

CASES = Path(__file__).resolve().parents[1].parent / "shared" / "cases"


def copy_case(name: str, tmp_path: Path) -> Path:
    source = CASES / name
    if not source.is_dir():
        pytest.skip(f"case folder {source} not available")
    return Path(shutil.copytree(source, tmp_path / name))


def write_split(folder: Path, split: str, pairs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.src").write_text("".join(src + "\n" for src, _ in pairs), "utf-8")
    (folder / f"{split}.tgt").write_text("".join(tgt + "\n" for _, tgt in pairs), "utf-8")


def toy_pairs(count: int, offset: int = 0):
    """Pairs of the toy rule: wN maps to wN:p when N is divisible by 3, else wN:a."""
    pairs = []
    for i in range(count):
        words = [f"w{(i * 7 + j * 3 + offset) % 20 + 1}" for j in range(4)]
        tags = [f"{w}:p" if int(w[1:]) % 3 == 0 else f"{w}:a" for w in words]
        pairs.append((" ".join(words), " ".join(tags)))
    return pairs


def toy_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    write_split(data, "train", toy_pairs(30))
    write_split(data, "valid", toy_pairs(5, offset=1))
    write_split(data, "test", toy_pairs(5, offset=2))
    return data


def run_prepare(args, capsys):
    status = cli_main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_nothing_written(output: Path) -> None:
    assert not output.exists()
    leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]
    assert leftovers == []


def read_lines(path: Path):
    return path.read_text("utf-8").split("\n")[:-1]


# Bad inputs: every defect named with file and line, nothing written.

def test_carriage_return_case_names_lines(tmp_path, capsys):
    data = copy_case("carriage-return", tmp_path)
    output = tmp_path / "out"
    status, _, err = run_prepare([data, output], capsys)
    assert status == 1
    assert "train.tgt:11: contains a carriage return (\\r)" in err
    assert "train.tgt:21: contains a line separator (U+2028)" in err
    assert "train.tgt:31: contains a next-line character (U+0085)" in err
    assert "--replace-separators" in err
    assert_nothing_written(output)


def test_non_utf8_case_names_last_line(tmp_path, capsys):
    data = copy_case("non-utf8", tmp_path)
    output = tmp_path / "out"
    status, _, err = run_prepare([data, output], capsys)
    assert status == 1
    assert "train.src:101: invalid UTF-8: byte 0xE9" in err
    assert "train.tgt:101: invalid UTF-8: byte 0xE9" in err
    assert_nothing_written(output)


def test_empty_lines_case_lists_every_line(tmp_path, capsys):
    data = copy_case("empty-lines", tmp_path)
    output = tmp_path / "out"
    status, _, err = run_prepare([data, output], capsys)
    assert status == 1
    for where in ("train.src:5:", "train.tgt:9:", "test.src:3:", "test.tgt:3:"):
        assert f"{where} is empty" in err
    assert_nothing_written(output)


def test_empty_test_lines_never_dropped(tmp_path, capsys):
    data = copy_case("empty-lines", tmp_path)
    output = tmp_path / "out"
    status, _, err = run_prepare([data, output, "--drop-bad-train-pairs"], capsys)
    assert status == 1
    assert "test.src:3: is empty" in err
    assert "test.tgt:3: is empty" in err
    assert "train.src:5" not in err
    assert_nothing_written(output)


def test_untagged_target_tokens_reported(tmp_path, capsys):
    data = toy_data(tmp_path)
    pairs = toy_pairs(30)
    pairs[1] = ("w1 w2 w3", "foo w2:a w3:x")
    write_split(data, "train", pairs)
    output = tmp_path / "out"
    status, _, err = run_prepare([data, output], capsys)
    assert status == 1
    assert "train.tgt:2: target token(s) 'foo', 'w3:x' fit no class" in err
    assert_nothing_written(output)


def test_line_count_mismatch_reported(tmp_path, capsys):
    data = toy_data(tmp_path)
    with open(data / "valid.tgt", "a", encoding="utf-8") as handle:
        handle.write("w1:a\n")
    output = tmp_path / "out"
    status, _, err = run_prepare([data, output, "--drop-bad-train-pairs"], capsys)
    assert status == 1
    assert "valid.src has 5 lines but valid.tgt has 6" in err
    assert_nothing_written(output)


def test_reserved_symbol_reported(tmp_path, capsys):
    data = toy_data(tmp_path)
    pairs = toy_pairs(5, offset=2)
    pairs[3] = ("w1 </s> w2", pairs[3][1])
    write_split(data, "test", pairs)
    output = tmp_path / "out"
    status, _, err = run_prepare([data, output], capsys)
    assert status == 1
    assert "test.src:4: contains </s>, reserved by fairseq's dictionary" in err


def test_valid_pairs_never_dropped(tmp_path, capsys):
    data = toy_data(tmp_path)
    pairs = toy_pairs(5, offset=1)
    pairs[2] = (pairs[2][0], pairs[2][1] + " foo")
    write_split(data, "valid", pairs)
    output = tmp_path / "out"
    status, _, err = run_prepare([data, output, "--drop-bad-train-pairs"], capsys)
    assert status == 1
    assert "valid.tgt:3: target token(s) 'foo'" in err
    assert_nothing_written(output)


def test_missing_valid_split_rejected(tmp_path, capsys):
    data = toy_data(tmp_path)
    (data / "valid.tgt").unlink()
    status, _, err = run_prepare([data, tmp_path / "out"], capsys)
    assert status == 1
    assert "valid.tgt not found" in err


def test_half_test_split_rejected(tmp_path, capsys):
    data = toy_data(tmp_path)
    (data / "test.tgt").unlink()
    status, _, err = run_prepare([data, tmp_path / "out"], capsys)
    assert status == 1
    assert "test.tgt not found" in err
    assert "give both test files or neither" in err


def test_missing_test_split_allowed(tmp_path, capsys):
    data = toy_data(tmp_path)
    (data / "test.src").unlink()
    (data / "test.tgt").unlink()
    output = tmp_path / "out"
    status, _, _ = run_prepare([data, output], capsys)
    assert status == 0
    report = json.loads((output / "prepare.json").read_text("utf-8"))
    assert report["pairs"] == {"train": 30, "valid": 5}
    assert not (output / "data-bin" / "test.src-tgt.src.idx").exists()
    assert (output / "raw" / "valid.tgt").is_file()


def test_existing_output_needs_overwrite(tmp_path, capsys):
    data = toy_data(tmp_path)
    output = tmp_path / "out"
    output.mkdir()
    (output / "old.txt").write_text("old", "utf-8")
    status, _, err = run_prepare([data, output], capsys)
    assert status == 1
    assert "already exists; remove it or pass --overwrite" in err

    status, _, _ = run_prepare([data, output, "--overwrite"], capsys)
    assert status == 0
    assert not (output / "old.txt").exists()
    assert (output / "data-bin" / "dict.tgt.txt").is_file()


def test_failed_sentencepiece_leaves_nothing(tmp_path, capsys):
    data = toy_data(tmp_path)
    output = tmp_path / "out"
    status, _, err = run_prepare([data, output, "--spm-vocab-size", "5000"], capsys)
    assert status == 1
    assert "choose another --spm-vocab-size" in err
    assert_nothing_written(output)


# Options that repair or rewrite the data.

def test_drop_bad_train_pairs_counts(tmp_path, capsys):
    data = copy_case("empty-lines", tmp_path)
    # Fill the empty test pair, which is never dropped, so that preparation can succeed.
    for side, text in (("src", "w3 w4"), ("tgt", "w3:p w4:a")):
        lines = read_lines(data / f"test.{side}")
        lines[2] = text
        (data / f"test.{side}").write_text("".join(line + "\n" for line in lines), "utf-8")
    output = tmp_path / "out"
    status, out, _ = run_prepare([data, output, "--drop-bad-train-pairs"], capsys)
    assert status == 0
    assert "dropped 2 training pair(s)" in out
    report = json.loads((output / "prepare.json").read_text("utf-8"))
    assert report["dropped_train_pairs"]["count"] == 2
    assert report["dropped_train_pairs"]["lines"] == [5, 9]
    assert report["dropped_train_pairs"]["reasons"] == {corpus.EMPTY: 2}
    assert report["pairs"] == {"train": 198, "valid": 40, "test": 40}
    assert len(read_lines(output / "text" / "train.src")) == 198
    assert len(read_lines(output / "text" / "train.tgt")) == 198


def test_drop_invalid_utf8_train_pair(tmp_path, capsys):
    data = copy_case("non-utf8", tmp_path)
    output = tmp_path / "out"
    status, _, _ = run_prepare([data, output, "--drop-bad-train-pairs"], capsys)
    assert status == 0
    report = json.loads((output / "prepare.json").read_text("utf-8"))
    assert report["dropped_train_pairs"]["lines"] == [101]
    assert report["pairs"]["train"] == 100


def test_replace_separators_option(tmp_path, capsys):
    data = copy_case("carriage-return", tmp_path)
    output = tmp_path / "out"
    status, _, _ = run_prepare([data, output, "--replace-separators"], capsys)
    assert status == 0
    report = json.loads((output / "prepare.json").read_text("utf-8"))
    assert report["replaced_separators"] == ["train.tgt:11", "train.tgt:21", "train.tgt:31"]
    text = (output / "text" / "train.tgt").read_text("utf-8")
    assert len(text.splitlines()) == 100
    assert not any(char in text for char in corpus.STRAY_SEPARATORS)


def test_rare_words_keep_tags(tmp_path, capsys):
    data = copy_case("rare-tokens", tmp_path)
    output = tmp_path / "out"
    status, _, _ = run_prepare([data, output, "--unk-threshold", "2"], capsys)
    assert status == 0

    # Line 201 contains the only w7:p and two odd tokens, each seen once.
    train = read_lines(output / "text" / "train.tgt")
    assert train[200] == "w1:a <unk>:a <unk>:a <unk>:p"
    assert all(predpatt.token_tag(token) for line in train for token in line.split())
    dictionary = [line.split()[0] for line in read_lines(output / "data-bin" / "dict.tgt.txt")]
    assert "<unk>:p" in dictionary
    assert "<unk>:a" in dictionary
    assert "w7:p" not in dictionary
    report = json.loads((output / "prepare.json").read_text("utf-8"))
    assert report["target_unknowns"]["rare_word_types"] == 3

    # Scoring uses the references as given.
    assert (output / "raw" / "test.tgt").read_bytes() == (data / "test.tgt").read_bytes()


def test_rare_word_replacement_spares_brackets():
    line = "^((( ^(( x:a_h ))$ y:p_h SOMETHING:a= ^(( z:a ))$ ^(((:a v:p_h )))$:a )))$"
    counts = corpus.count_target_words(["z:a z:a"])
    rewritten, replaced = corpus.replace_rare_words(line, counts, threshold=2)
    assert rewritten == ("^((( ^(( <unk>:a_h ))$ <unk>:p_h SOMETHING:a= ^(( z:a ))$ "
                         "^(((:a <unk>:p_h )))$:a )))$")
    assert replaced == 3


def test_reverse_source_option(tmp_path, capsys):
    data = toy_data(tmp_path)
    output = tmp_path / "out"
    status, _, _ = run_prepare([data, output, "--reverse-source"], capsys)
    assert status == 0
    original = read_lines(data / "train.src")
    reversed_lines = read_lines(output / "text" / "train.src")
    assert reversed_lines == [" ".join(reversed(line.split())) for line in original]
    assert read_lines(output / "raw" / "test.src") == read_lines(data / "test.src")
    assert read_lines(output / "text" / "train.tgt") == read_lines(data / "train.tgt")


def test_sentencepiece_trained_on_train_only(tmp_path, capsys):
    data = toy_data(tmp_path)
    # Letters q and z occur only in the test source.
    write_split(data, "test", [("qqq zzz w1", "w1:a w2:a w3:p"), ("zq w2", "w2:a")])
    output = tmp_path / "out"
    status, _, _ = run_prepare([data, output, "--spm-vocab-size", "20"], capsys)
    assert status == 0
    assert (output / "spm.model").is_file()
    pieces = [line.split("\t")[0] for line in read_lines(output / "spm.vocab")]
    assert len(pieces) == 20
    assert not any("q" in piece or "z" in piece for piece in pieces)
    assert all("\u2581" in line for line in read_lines(output / "text" / "valid.src"))
    assert read_lines(output / "raw" / "test.src") == ["qqq zzz w1", "zq w2"]


def test_fairseq_preprocess_output_exists(tmp_path, capsys):
    data = toy_data(tmp_path)
    output = tmp_path / "out"
    status, out, _ = run_prepare([data, output, "--src-threshold", "2"], capsys)
    assert status == 0
    assert f"prepared {output}" in out
    data_bin = output / "data-bin"
    assert (data_bin / "dict.src.txt").is_file()
    assert (data_bin / "dict.tgt.txt").is_file()
    for split in ("train", "valid", "test"):
        for side in ("src", "tgt"):
            for suffix in ("bin", "idx"):
                assert (data_bin / f"{split}.src-tgt.{side}.{suffix}").is_file()
    report = json.loads((output / "prepare.json").read_text("utf-8"))
    assert report["pairs"] == {"train": 30, "valid": 5, "test": 5}
    assert report["dictionary_sizes"]["tgt"] == len(read_lines(data_bin / "dict.tgt.txt"))
    assert "--thresholdsrc" in report["fairseq_preprocess_options"]


# The line reader on its own.

def test_reader_counts_lines_like_wc(tmp_path):
    path = tmp_path / "train.src"
    path.write_bytes(b"a b\nc\rd\ne\xe2\x80\xa8f")
    text = corpus.read_text_file(path)
    assert len(text.lines) == 3
    assert [problem.line for problem in text.problems] == [2, 3]
    assert all(problem.kind == corpus.SEPARATOR for problem in text.problems)


def test_reader_names_windows_line_ending(tmp_path):
    path = tmp_path / "valid.tgt"
    path.write_bytes(b"w1:a\r\nw2:a\r\n")
    text = corpus.read_text_file(path)
    assert str(text.problems[0]).startswith("valid.tgt:1: ends in \\r\\n")
    replaced = corpus.read_text_file(path, replace_separators=True)
    assert replaced.problems == []
    assert replaced.replaced_separator_lines == [1, 2]


def test_reader_rejects_byte_order_mark(tmp_path):
    path = tmp_path / "train.src"
    path.write_bytes("\ufeffw1 w2\n".encode("utf-8"))
    problems = corpus.read_text_file(path).problems
    assert len(problems) == 1
    assert "byte order mark" in problems[0].message
