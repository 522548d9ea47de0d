"""The ``halo-score`` command: score linearized PredPatt hypotheses against reference files.

Reads the files, restores ``fairseq-generate`` output to source order, and prints the metrics of
:mod:`fairseq_halo.metrics` as a table or as JSON. All scores are percentages in [0, 100].
"""

import argparse
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from . import corpus, metrics, predpatt

logger = logging.getLogger(__name__)

HYPOTHESIS_FORMATS = ("auto", "plain", "generate")
F1_VARIANTS = ("token", "mention")

# Characters other than "\n" that str.splitlines() (and, for "\r", universal-newline readers such
# as fairseq-preprocess) treat as line ends. A scorer that let them through would count
# sentences differently from the tools that made the files, so lines containing them are rejected.
LINE_SEPARATORS = {
    "\r": "carriage return",
    "\x0b": "line tabulation",
    "\x0c": "form feed",
    "\x1c": "file separator",
    "\x1d": "group separator",
    "\x1e": "record separator",
    "\x85": "next line",
    "\u2028": "line separator",
    "\u2029": "paragraph separator",
}
LINE_SEPARATOR_PATTERN = re.compile("[" + "".join(LINE_SEPARATORS) + "]")

# fairseq-generate prints each hypothesis as "H-<id>\t<score>\t<tokens>"; <id> is the 0-based
# line number of the sentence in the generated split.
GENERATE_HYPOTHESIS_PREFIX = re.compile(rb"H-[0-9]+\t")

MAX_LISTED_IDS = 20


class InputError(ValueError):
    """An input that cannot be scored. The message names the file and, where known, the line."""


def split_lines(data: bytes, name: str) -> List[bytes]:
    """Split file contents on ``b"\\n"`` only. A final newline does not start another line.

    Raises:
        InputError: the file is empty (zero bytes).
    """
    if not data:
        raise InputError(f"{name}: file is empty; expected one linearized sequence per line")
    return corpus.split_lines(data)


def decode_line(raw: bytes, name: str, number: int) -> str:
    """Decode one line as UTF-8 and reject line separators other than ``\\n`` inside it.

    Raises:
        InputError: invalid UTF-8, or a separator such as ``\\r`` or U+2028, naming the line.
    """
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{name}:{number}: invalid UTF-8 byte 0x{raw[error.start]:02x} at byte "
            f"{error.start + 1} of the line; re-encode the file as UTF-8 "
            "(for Latin-1 input: iconv -f latin1 -t utf-8)"
        ) from None

    match = LINE_SEPARATOR_PATTERN.search(line)
    if match:
        char = match.group()
        raise InputError(
            f"{name}:{number}: U+{ord(char):04X} ({LINE_SEPARATORS[char]}) at character "
            f"{match.start() + 1}; only \\n may end a line. Remove the character "
            "(for Windows line endings: sed -i 's/\\r$//' FILE)"
        )
    return line


def display_name(path: str) -> str:
    """Return the name that messages use for a path, ``<stdin>`` for ``-``."""
    return "<stdin>" if path == "-" else path


def read_raw_lines(path: str) -> Tuple[str, List[bytes]]:
    """Return the name to show in messages and the raw lines of a file, or of stdin for ``-``."""
    if path == "-":
        return display_name(path), split_lines(sys.stdin.buffer.read(), display_name(path))
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read file: {error.strerror}") from None
    return path, split_lines(data, path)


def is_generate_output(raw_lines: Sequence[bytes]) -> bool:
    """Return True if any line starts like a ``fairseq-generate`` hypothesis (``H-<id>``, tab)."""
    return any(GENERATE_HYPOTHESIS_PREFIX.match(raw) for raw in raw_lines)


def format_id_ranges(ids: Sequence[int], limit: int = MAX_LISTED_IDS) -> str:
    """Write sorted ids as ranges, e.g. ``3, 7-9, 12``, listing at most ``limit`` ranges."""
    ranges: List[List[int]] = []
    for i in sorted(ids):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"and {len(ranges) - limit} more ranges")
    return ", ".join(parts)


def hypotheses_from_generate(
    raw_lines: Sequence[bytes], name: str, num_sentences: int, reference_name: str
) -> List[str]:
    """Collect the ``H-`` lines of ``fairseq-generate`` output in source order.

    Other lines (``S-``, ``T-``, ``D-``, ``P-``, log lines) are skipped. ``T-`` lines are not
    used as references because fairseq prints unknown words there as ``<<unk>>``.

    Returns:
        One hypothesis string per id ``0 .. num_sentences - 1``.

    Raises:
        InputError: a malformed ``H-`` line, an id repeated or out of range, or missing ids.
    """
    by_id: Dict[int, str] = {}
    line_of_id: Dict[int, int] = {}
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.startswith(b"H-"):
            continue
        line = decode_line(raw, name, number)
        sentence_id, hypothesis = _parse_hypothesis_line(line, name, number)
        if sentence_id >= num_sentences:
            raise InputError(
                f"{name}:{number}: hypothesis id {sentence_id} is out of range because "
                f"{reference_name} has {num_sentences} lines (ids 0-{num_sentences - 1}); "
                "pass the reference file of the split that was generated"
            )
        if sentence_id in by_id:
            raise InputError(
                f"{name}:{number}: duplicate hypothesis id {sentence_id} (first at line "
                f"{line_of_id[sentence_id]}); run fairseq-generate with --nbest 1"
            )
        by_id[sentence_id] = hypothesis
        line_of_id[sentence_id] = number

    if not by_id:
        raise InputError(f"{name}: no H- lines found; is this fairseq-generate output?")
    missing = [i for i in range(num_sentences) if i not in by_id]
    if missing:
        raise InputError(
            f"{name}: no H- line for {len(missing)} of {num_sentences} sentences, ids "
            f"{format_id_ranges(missing)} (0-based lines of {reference_name}). Either "
            "fairseq-generate skipped them, so rerun it with --required-batch-size-multiple 1 "
            "(the default of 8 can drop sentences when --batch-size is not a multiple of it) "
            "and without --skip-invalid-size-inputs-valid-test, or the reference file is not "
            "the generated split"
        )
    return [by_id[i] for i in range(num_sentences)]


def _parse_hypothesis_line(line: str, name: str, number: int) -> Tuple[int, str]:
    fields = line.split("\t", 2)
    id_text = fields[0][len("H-"):]
    valid = len(fields) >= 2 and id_text.isascii() and id_text.isdigit()
    if valid:
        try:
            float(fields[1])
        except ValueError:
            valid = False
    if not valid:
        raise InputError(
            f"{name}:{number}: invalid H- line; expected 'H-<id>', a tab, the score, a tab "
            "and the tokens"
        )
    # An H- line whose trailing tab was stripped contains an empty hypothesis.
    hypothesis = fields[2] if len(fields) == 3 else ""
    return int(id_text), hypothesis


def check_line_counts(
    hypotheses: Sequence[str], hypothesis_name: str, references: Sequence[str], reference_name: str
) -> None:
    """Raise InputError naming the first missing or extra hypothesis line."""
    hypothesis_count, reference_count = len(hypotheses), len(references)
    if hypothesis_count == reference_count:
        return
    problem = "missing line" if hypothesis_count < reference_count else "extra line"
    raise InputError(
        f"{hypothesis_name}:{min(hypothesis_count, reference_count) + 1}: {problem}: "
        f"{hypothesis_name} has {hypothesis_count} lines but {reference_name} has "
        f"{reference_count}; write one hypothesis per reference line "
        "(an empty line for an empty extraction)"
    )


def read_inputs(
    reference_path: str, hypothesis_path: str, hypothesis_format: str
) -> Tuple[List[str], List[str], str]:
    """Read references and hypotheses, aligned by line.

    Returns:
        ``(hypotheses, references, format)`` where ``format`` is ``plain`` or ``generate``.
    """
    if hypothesis_format not in HYPOTHESIS_FORMATS:
        raise ValueError(
            f"invalid hypothesis format {hypothesis_format!r}; expected one of {HYPOTHESIS_FORMATS}"
        )
    if reference_path == "-" and hypothesis_path == "-":
        raise InputError("--ref and --hyp cannot both be '-' (stdin)")
    reference_name, raw_references = read_raw_lines(reference_path)
    references = [
        decode_line(raw, reference_name, n) for n, raw in enumerate(raw_references, start=1)
    ]
    hypothesis_name, raw_hypotheses = read_raw_lines(hypothesis_path)

    if hypothesis_format == "auto":
        hypothesis_format = "generate" if is_generate_output(raw_hypotheses) else "plain"
        logger.info("reading %s as %s hypotheses", hypothesis_name, hypothesis_format)
    if hypothesis_format == "generate":
        hypotheses = hypotheses_from_generate(
            raw_hypotheses, hypothesis_name, len(references), reference_name
        )
    else:
        hypotheses = [
            decode_line(raw, hypothesis_name, n) for n, raw in enumerate(raw_hypotheses, start=1)
        ]
        check_line_counts(hypotheses, hypothesis_name, references, reference_name)
    return hypotheses, references, hypothesis_format


def score_sequences(
    hypotheses: Sequence[str], references: Sequence[str], f1_variant: str = "token"
) -> dict:
    """Compute every metric and return the report as a JSON-ready dict of percentages.

    Raises:
        ValueError: ``f1_variant`` is not one of ``F1_VARIANTS``.
        metrics.MalformedReference: ``f1_variant`` is ``mention`` and a reference does not parse.
    """
    if f1_variant not in F1_VARIANTS:
        raise ValueError(f"invalid F1 variant {f1_variant!r}; expected one of {F1_VARIANTS}")

    hypothesis_tokens = [metrics.tokenize(line) for line in hypotheses]
    reference_tokens = [metrics.tokenize(line) for line in references]
    f1 = metrics.token_f1 if f1_variant == "token" else metrics.mention_f1

    bleu = metrics.corpus_bleu(hypothesis_tokens, reference_tokens)
    predicate = f1(hypothesis_tokens, reference_tokens, predpatt.PREDICATE)
    argument = f1(hypothesis_tokens, reference_tokens, predpatt.ARGUMENT)
    recoverable = metrics.recoverability(hypothesis_tokens)

    bleu_report = dataclasses.asdict(bleu)
    for key in ("counts", "totals", "precisions"):
        bleu_report[key] = list(bleu_report[key])
    return {
        "sentences": len(references),
        "bleu": bleu_report,
        "f1": {
            "variant": f1_variant,
            "predicate": _prf_report(predicate),
            "argument": _prf_report(argument),
        },
        "recoverability": {
            "score": 100 * recoverable.score,
            "well_formed": recoverable.well_formed,
            "total": recoverable.total,
        },
    }


def _prf_report(prf: metrics.PRF) -> dict:
    return {
        "precision": 100 * prf.precision,
        "recall": 100 * prf.recall,
        "f1": 100 * prf.f1,
        "overlap": prf.overlap,
        "hypothesis_total": prf.hypothesis_total,
        "reference_total": prf.reference_total,
    }


def format_table(report: dict) -> str:
    """Lay out a report of :func:`score_sequences` as an aligned plain-text table."""
    variant = report["f1"]["variant"]
    recoverable = report["recoverability"]
    rows = [
        f"{'sentences':<20}{report['sentences']:>8}",
        f"{'BLEU':<20}{report['bleu']['score']:>8.2f}  {report['bleu']['signature']}",
        f"{'':<20}{'P':>8}{'R':>8}{'F':>8}",
    ]
    for label, key in (("F1 PRED", "predicate"), ("F1 ARG", "argument")):
        prf = report["f1"][key]
        rows.append(
            f"{f'{label} ({variant})':<20}"
            f"{prf['precision']:>8.2f}{prf['recall']:>8.2f}{prf['f1']:>8.2f}"
        )
    rows.append(
        f"{'recoverability':<20}{recoverable['score']:>8.2f}  "
        f"({recoverable['well_formed']} of {recoverable['total']} hypotheses well formed)"
    )
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halo-score",
        description=(
            "Score linearized PredPatt hypotheses against references: BLEU (sacrebleu with "
            "multi-bleu.perl settings: cased, no tokenization, no smoothing), F1 of predicate "
            "and argument words, and recoverability (share of well-formed hypotheses). All "
            "scores are percentages in [0, 100]. Files are UTF-8 with one sequence per line, "
            "and only \\n ends a line."
        ),
    )
    parser.add_argument(
        "--ref",
        required=True,
        help="reference file, one linearized sequence per line; '-' reads stdin",
    )
    parser.add_argument(
        "--hyp",
        required=True,
        help="hypothesis file: one sequence per reference line, or fairseq-generate output "
        "(its H-<id> lines are put back in reference order); '-' reads stdin",
    )
    parser.add_argument(
        "--hyp-format",
        choices=HYPOTHESIS_FORMATS,
        default="auto",
        help="'generate' reads fairseq-generate output, 'plain' one sequence per line; "
        "'auto' (default) picks 'generate' if any line starts with H-<id> and a tab",
    )
    parser.add_argument(
        "--f1",
        choices=F1_VARIANTS,
        default="token",
        help="'token' (default): overlap of predicate and argument word multisets per "
        "sentence; 'mention': partial credit per bracket, pairing mentions by Dice overlap",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of a table"
    )
    return parser


def score_files(
    reference_path: str, hypothesis_path: str, hypothesis_format: str, f1_variant: str
) -> dict:
    """Read both files, score them, and return the report with the input files recorded."""
    hypotheses, references, used_format = read_inputs(
        reference_path, hypothesis_path, hypothesis_format
    )
    try:
        report = score_sequences(hypotheses, references, f1_variant)
    except metrics.MalformedReference as error:
        raise InputError(
            f"{display_name(reference_path)}:{error.index + 1}: malformed reference, so its "
            f"mentions are unknown: {error.reason}; fix the line or use --f1 token"
        ) from None
    report["references"] = {"file": reference_path}
    report["hypotheses"] = {"file": hypothesis_path, "format": used_format}
    return report


def cli_main(argv=None) -> int:
    """Run ``halo-score``; return 0, or exit with a message naming the file and line."""
    args = build_parser().parse_args(argv)
    try:
        report = score_files(args.ref, args.hyp, args.hyp_format, args.f1)
    except InputError as error:
        raise SystemExit(f"halo-score: error: {error}") from None

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
