"""Tests of the halo-score command: file reading, fairseq-generate output, errors and the CLI."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fairseq_halo import score

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

REFERENCE = "^((( ^(( the:a cat:a_h ))$ sat:p_h on:p ^(( the:a mat:a_h ))$ )))$"
HYPOTHESIS = "^((( ^(( cat:a_h ))$ sat:p_h ^(( on:a the:a mat:a_h ))$ )))$"


def shared_case(name):
    path = SHARED / "cases" / name
    if not path.is_dir():
        pytest.skip(f"shared case folder {name} is not present")
    return path


def write_bytes(path, data):
    path.write_bytes(data)
    return str(path)


def write_lines(path, lines):
    return write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def generate_output(hypotheses, order):
    """Build fairseq-generate output for the given ids, in the order given."""
    lines = ["2024-01-01 00:00:00 | INFO | fairseq_cli.generate | loading model(s)"]
    for i in order:
        lines += [
            f"S-{i}\tsource {i}",
            f"T-{i}\t<<unk>>:a",
            f"H-{i}\t-0.{i + 1}\t{hypotheses[i]}",
            f"D-{i}\t-0.{i + 1}\t{hypotheses[i]}",
            f"P-{i}\t-0.1000 -0.2000",
        ]
    lines.append("2024-01-01 00:00:01 | INFO | fairseq_cli.generate | Translated 3 sentences")
    return lines


def halo_score_command():
    """Return the installed console script, or ``python -m`` when it is not installed."""
    script = Path(sys.executable).with_name("halo-score")
    if script.exists():
        return [str(script)]
    found = shutil.which("halo-score")
    return [found] if found else [sys.executable, "-m", "fairseq_halo.score"]


# reading lines


def test_split_lines_final_newline_optional():
    assert score.split_lines(b"a\nb\n", "f") == [b"a", b"b"]
    assert score.split_lines(b"a\nb", "f") == [b"a", b"b"]
    assert score.split_lines(b"\n", "f") == [b""]


def test_split_lines_empty_file_raises():
    with pytest.raises(score.InputError, match="^hyp.txt: file is empty"):
        score.split_lines(b"", "hyp.txt")


@pytest.mark.parametrize(
    "char, code",
    [("\r", "U+000D"), ("\u2028", "U+2028"), ("\x85", "U+0085"), ("\x0c", "U+000C")],
)
def test_decode_line_rejects_line_separators(char, code):
    raw = f"w1:a{char}w2:p".encode("utf-8")

    expected = rf"^ref.txt:7: {re.escape(code)} .* at character 5"

    with pytest.raises(score.InputError, match=expected):
        score.decode_line(raw, "ref.txt", 7)


def test_decode_line_keeps_tabs_and_spaces():
    assert score.decode_line(b"w1:a\t w2:p ", "ref.txt", 1) == "w1:a\t w2:p "


def test_read_inputs_non_utf8_names_line(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["a:a", "b:a", "c:a"])
    hyp = write_bytes(tmp_path / "hyp.txt", b"a:a\nb:a\ncaf\xe9:a\n")

    with pytest.raises(score.InputError, match=r"hyp.txt:3: invalid UTF-8 byte 0xe9 at byte 4"):
        score.read_inputs(ref, hyp, "auto")


def test_read_inputs_empty_reference_file(tmp_path):
    ref = write_bytes(tmp_path / "ref.txt", b"")
    hyp = write_lines(tmp_path / "hyp.txt", ["a:a"])

    with pytest.raises(score.InputError, match="ref.txt: file is empty"):
        score.read_inputs(ref, hyp, "auto")


def test_read_inputs_missing_hypothesis_line(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["a:a", "b:a", "c:a"])
    hyp = write_lines(tmp_path / "hyp.txt", ["a:a", "b:a"])

    with pytest.raises(score.InputError, match="hyp.txt:3: missing line: .* has 2 lines .* has 3"):
        score.read_inputs(ref, hyp, "auto")


def test_read_inputs_extra_hypothesis_line(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["a:a"])
    hyp = write_lines(tmp_path / "hyp.txt", ["a:a", ""])

    with pytest.raises(score.InputError, match="hyp.txt:2: extra line"):
        score.read_inputs(ref, hyp, "auto")


def test_read_inputs_missing_file(tmp_path):
    hyp = write_lines(tmp_path / "hyp.txt", ["a:a"])

    with pytest.raises(score.InputError, match="absent.txt: cannot read file"):
        score.read_inputs(str(tmp_path / "absent.txt"), hyp, "auto")


def test_carriage_return_case_rejected():
    # Line 11 of train.tgt contains a lone carriage return after its first token.
    path = shared_case("carriage-return") / "train.tgt"

    with pytest.raises(score.InputError, match=r"train.tgt:11: U\+000D \(carriage return\)"):
        score.read_inputs(str(path), str(path), "plain")


def test_non_utf8_case_rejected():
    path = shared_case("non-utf8") / "train.tgt"

    with pytest.raises(score.InputError, match="train.tgt:101: invalid UTF-8"):
        score.read_inputs(str(path), str(path), "plain")


# fairseq-generate output


def test_generate_output_restored_to_source_order(tmp_path):
    hypotheses = ["a:a", "", "c:p d:a"]
    ref = write_lines(tmp_path / "ref.txt", ["x:a", "y:a", "z:a"])
    hyp = write_lines(tmp_path / "gen.txt", generate_output(hypotheses, order=[2, 0, 1]))
    read, references, used_format = score.read_inputs(ref, hyp, "auto")

    assert used_format == "generate"
    assert read == hypotheses
    assert references == ["x:a", "y:a", "z:a"]


def test_generate_output_missing_ids_raise(tmp_path):
    # As with --batch-size 5 and --required-batch-size-multiple 8: 35 of 40 sentences printed.
    hypotheses = {i: f"w{i}:a" for i in range(40)}
    printed = [i for i in range(40) if i not in (3, 17, 18, 19, 39)]
    ref = write_lines(tmp_path / "ref.txt", [f"w{i}:a" for i in range(40)])
    hyp = write_lines(tmp_path / "gen.txt", generate_output(hypotheses, order=printed[::-1]))

    with pytest.raises(score.InputError) as error:
        score.read_inputs(ref, hyp, "auto")
    message = str(error.value)
    assert "5 of 40 sentences" in message
    assert "ids 3, 17-19, 39" in message
    assert "--required-batch-size-multiple 1" in message


def test_generate_output_duplicate_id_raises(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["x:a", "y:a"])
    lines = ["H-0\t-0.1\tx:a", "H-1\t-0.1\ty:a", "H-1\t-0.2\tz:a"]
    hyp = write_lines(tmp_path / "gen.txt", lines)

    with pytest.raises(score.InputError, match="gen.txt:3: duplicate hypothesis id 1 .*line 2"):
        score.read_inputs(ref, hyp, "auto")


def test_generate_output_id_out_of_range(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["x:a"])
    hyp = write_lines(tmp_path / "gen.txt", ["H-0\t-0.1\tx:a", "H-1\t-0.1\ty:a"])

    with pytest.raises(score.InputError, match="gen.txt:2: hypothesis id 1 is out of range"):
        score.read_inputs(ref, hyp, "auto")


def test_generate_output_invalid_line(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["x:a"])
    hyp = write_lines(tmp_path / "gen.txt", ["H-0\tnot-a-score\tx:a"])

    with pytest.raises(score.InputError, match="gen.txt:1: invalid H- line"):
        score.read_inputs(ref, hyp, "generate")


def test_generate_format_without_h_lines(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["x:a"])
    hyp = write_lines(tmp_path / "hyp.txt", ["x:a"])

    with pytest.raises(score.InputError, match="hyp.txt: no H- lines found"):
        score.read_inputs(ref, hyp, "generate")


def test_auto_format_plain_file(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["H-0:a", "x:a"])
    hyp = write_lines(tmp_path / "hyp.txt", ["H-0:a", "x:a"])

    assert score.read_inputs(ref, hyp, "auto")[2] == "plain"


def test_format_id_ranges_limits_output():
    assert score.format_id_ranges([5, 1, 2, 3, 9]) == "1-3, 5, 9"
    assert score.format_id_ranges([0, 2, 4], limit=2) == "0, 2, and 1 more ranges"


# scoring


def test_score_sequences_report_values():
    # Token F1 of the worked example: PRED P 100 and R 50, ARG 3 of 4 words both ways.
    report = score.score_sequences([HYPOTHESIS, ""], [REFERENCE, ""])

    assert report["sentences"] == 2
    assert report["f1"]["predicate"]["precision"] == 100.0
    assert report["f1"]["predicate"]["recall"] == 50.0
    assert report["f1"]["argument"]["f1"] == pytest.approx(75.0)
    assert report["recoverability"] == {"score": 100.0, "well_formed": 2, "total": 2}


def test_score_sequences_rejects_unknown_variant():
    with pytest.raises(ValueError, match="invalid F1 variant 'span'"):
        score.score_sequences(["a:a"], ["a:a"], "span")


def test_empty_lines_case_scores_reference_itself():
    # Line 3 of test.tgt is empty. Scored against itself, the file gets 100 everywhere.
    path = str(shared_case("empty-lines") / "test.tgt")
    report = score.score_files(path, path, "auto", "token")

    assert report["bleu"]["score"] == pytest.approx(100.0)
    assert report["f1"]["predicate"]["f1"] == pytest.approx(100.0)
    assert report["f1"]["argument"]["f1"] == pytest.approx(100.0)


def test_tokens_for_empty_reference_are_false_positives(tmp_path):
    # Sentence 2 has an empty reference and two hypothesis argument words: ARG P = 1/3, R = 1.
    ref = write_lines(tmp_path / "ref.txt", ["a:a", ""])
    hyp = write_lines(tmp_path / "hyp.txt", ["a:a", "b:a c:a"])
    report = score.score_files(ref, hyp, "auto", "token")

    assert report["f1"]["argument"]["precision"] == pytest.approx(100 / 3)
    assert report["f1"]["argument"]["recall"] == 100.0


def test_mention_f1_malformed_reference_names_line(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["^(( a:a_h ))$", "^(( a:a_h"])
    hyp = write_lines(tmp_path / "hyp.txt", ["a:a", "a:a"])

    with pytest.raises(score.InputError, match="ref.txt:2: malformed reference"):
        score.score_files(ref, hyp, "auto", "mention")


def test_cli_main_prints_table(tmp_path, capsys):
    ref = write_lines(tmp_path / "ref.txt", [REFERENCE])
    hyp = write_lines(tmp_path / "hyp.txt", [HYPOTHESIS])

    assert score.cli_main(["--ref", ref, "--hyp", hyp, "--f1", "mention"]) == 0
    table = capsys.readouterr().out
    assert "tok:none" in table
    assert "F1 PRED (mention)" in table
    assert "F1 ARG (mention)" in table
    assert "recoverability" in table


def test_cli_main_error_exits_with_message(tmp_path):
    ref = write_lines(tmp_path / "ref.txt", ["a:a"])
    hyp = write_bytes(tmp_path / "hyp.txt", b"")

    with pytest.raises(SystemExit, match="halo-score: error: .*hyp.txt: file is empty"):
        score.cli_main(["--ref", ref, "--hyp", hyp])


# the installed command


def test_cli_json_bleu_tokenizer_case():
    case = shared_case("bleu-tokenizer")
    command = halo_score_command()
    args = ["--ref", str(case / "ref.txt"), "--hyp", str(case / "hyp.txt"), "--json"]
    result = subprocess.run(command + args, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bleu"]["score"] == 0.0
    assert report["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:none")
    assert report["f1"]["predicate"]["f1"] == 0.0
    assert report["sentences"] == 2
    assert report["hypotheses"]["format"] == "plain"


def test_cli_generate_output_from_stdin(tmp_path):
    # The module entry point, generate output on stdin, one id missing.
    ref = write_lines(tmp_path / "ref.txt", ["x:a", "y:a", "z:a"])
    output = "\n".join(generate_output(["x:a", "y:a", "z:a"], order=[2, 0])) + "\n"
    command = [sys.executable, "-m", "fairseq_halo.score", "--ref", ref, "--hyp", "-"]
    result = subprocess.run(command, input=output, capture_output=True, text=True, timeout=120)

    assert result.returncode == 1
    assert "<stdin>: no H- line for 1 of 3 sentences, ids 1" in result.stderr
