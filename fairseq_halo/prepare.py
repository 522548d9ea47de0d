"""The ``halo-prepare`` command: validate parallel CLIE text and binarize it for fairseq.

Reads ``{train,valid,test}.{src,tgt}`` (test optional), reports every defect with file and
line (:mod:`fairseq_halo.corpus`), then optionally segments the source with sentencepiece,
reverses it and replaces rare target words by tag-preserving unknowns, and runs stock
``fairseq-preprocess``. Everything is built in a temporary folder beside the output and renamed
into place only on success. Output layout::

    OUT/prepare.json    counts, dropped pairs, vocabulary sizes, options
    OUT/raw/            validated valid/test text before any rewriting: score against raw/test.tgt
    OUT/text/           the text that fairseq-preprocess read
    OUT/spm.model       with --spm-vocab-size, trained on the training source only
    OUT/data-bin/       fairseq-preprocess output (dict.src.txt, dict.tgt.txt, *.bin, *.idx)
"""

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import corpus

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
REQUIRED_SPLITS = ("train", "valid")
MAX_REPORTED_PROBLEMS = 50
MAX_LISTED_LINES = 100


class PrepareError(Exception):
    """Input data or options that cannot be prepared; ``problems`` lists every defect found."""

    def __init__(self, problems: List[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halo-prepare",
        description="Validate {train,valid,test}.{src,tgt} (test optional) and binarize them "
        "with fairseq-preprocess into OUTPUT_DIR/data-bin.",
    )
    parser.add_argument("data_dir", type=Path, help="folder with train/valid/test .src/.tgt")
    parser.add_argument("output_dir", type=Path, help="folder to create; must not exist yet")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUTPUT_DIR if it exists (only after a successful run)")
    parser.add_argument("--drop-bad-train-pairs", action="store_true",
                        help="drop training pairs with a defect (counted in prepare.json) "
                        "instead of failing; valid and test pairs are never dropped")
    parser.add_argument("--replace-separators", action="store_true",
                        help="replace stray line separators (\\r, U+2028, U+0085, ...) by a "
                        "space instead of failing")
    parser.add_argument("--spm-vocab-size", type=int, default=0, metavar="N",
                        help="train a sentencepiece model with N pieces on the training source "
                        "and segment every source split (default 0: no segmentation)")
    parser.add_argument("--reverse-source", action="store_true",
                        help="reverse the token order of every source sentence")
    parser.add_argument("--unk-threshold", type=int, default=1, metavar="N",
                        help="replace target words seen fewer than N times in train by "
                        "tag-preserving unknowns such as <unk>:a_h (default 1: only words "
                        "unseen in train; 0: no replacement)")
    parser.add_argument("--src-threshold", type=int, default=0, metavar="N",
                        help="fairseq-preprocess --thresholdsrc: source tokens seen fewer than "
                        "N times in train become <unk> (default 0: keep all)")
    parser.add_argument("--workers", type=int, default=1, help="processes for fairseq-preprocess "
                        "and threads for sentencepiece (default 1)")
    return parser


def check_options(args: argparse.Namespace) -> None:
    """Raise PrepareError for invalid option values and unusable input or output folders."""
    problems = []
    for flag, value, minimum in (("--spm-vocab-size", args.spm_vocab_size, 0),
                                 ("--unk-threshold", args.unk_threshold, 0),
                                 ("--src-threshold", args.src_threshold, 0),
                                 ("--workers", args.workers, 1)):
        if value < minimum:
            problems.append(f"{flag} {value} is invalid; use an integer >= {minimum}")
    data_dir, output_dir = args.data_dir.resolve(), args.output_dir.resolve()
    if not data_dir.is_dir():
        problems.append(f"data folder {args.data_dir} not found")
    for split in REQUIRED_SPLITS:
        for side in ("src", "tgt"):
            if data_dir.is_dir() and not (data_dir / f"{split}.{side}").is_file():
                problems.append(f"{split}.{side} not found in {args.data_dir}; "
                                "training needs train and valid .src/.tgt")
    test_files = [(data_dir / f"test.{side}").is_file() for side in ("src", "tgt")]
    if any(test_files) and not all(test_files):
        missing = "test.tgt" if test_files[0] else "test.src"
        problems.append(f"{missing} not found in {args.data_dir}; give both test files or neither")
    if output_dir.exists() and not args.overwrite:
        problems.append(f"output folder {args.output_dir} already exists; remove it or pass "
                        "--overwrite")
    if output_dir == data_dir or output_dir in data_dir.parents:
        problems.append(f"output folder {args.output_dir} contains the data folder; choose "
                        "another output folder")
    if problems:
        raise PrepareError(problems)


def read_split(data_dir: Path, split: str, replace_separators: bool) -> Dict:
    """Read and check one split.

    Returns:
        ``{"src": TextFile, "tgt": TextFile, "problems": [Problem], "bad_pairs": {line: kinds}}``
        where ``bad_pairs`` maps the 1-based line number of each defective pair to the set of
        its problem kinds.
    """
    files = {side: corpus.read_text_file(data_dir / f"{split}.{side}", replace_separators)
             for side in ("src", "tgt")}
    problems = files["src"].problems + files["tgt"].problems

    # Token checks on every line that decoded.
    for side in ("src", "tgt"):
        name = f"{split}.{side}"
        for number, line in enumerate(files[side].lines, start=1):
            problems.extend(corpus.check_tokens(line, name, number, is_target=side == "tgt"))

    bad_pairs: Dict[int, set] = {}
    for problem in problems:
        bad_pairs.setdefault(problem.line, set()).add(problem.kind)

    # A count mismatch is a defect of the whole file pair.
    counts = {side: len(files[side].lines) for side in ("src", "tgt")}
    if counts["src"] != counts["tgt"]:
        problems.append(corpus.Problem(
            f"{split}.src/{split}.tgt", 0, corpus.LINE_COUNT,
            f"{split}.src has {counts['src']} lines but {split}.tgt has {counts['tgt']}; line i "
            "of .src must pair with line i of .tgt",
        ))
    problems.sort(key=lambda problem: (problem.line, problem.file))
    return {"src": files["src"], "tgt": files["tgt"], "problems": problems,
            "bad_pairs": bad_pairs}


def read_splits(args: argparse.Namespace) -> Tuple[Dict[str, Dict], Dict]:
    """Read every split, drop defective training pairs when asked, and raise on the rest.

    Returns:
        The splits by name, each with ``src`` and ``tgt`` line lists, and the record of
        dropped training pairs.

    Raises:
        PrepareError: listing up to MAX_REPORTED_PROBLEMS defects that remain.
    """
    data_dir = args.data_dir.resolve()
    splits, errors = {}, []
    dropped = {"count": 0, "lines": [], "reasons": {}}
    for split in SPLITS:
        if split not in REQUIRED_SPLITS and not (data_dir / f"{split}.src").exists():
            logger.warning("no %s.src in %s: preparing without a %s split", split, data_dir, split)
            continue
        result = read_split(data_dir, split, args.replace_separators)
        droppable = split == "train" and args.drop_bad_train_pairs
        for problem in result["problems"]:
            if not droppable or problem.kind == corpus.LINE_COUNT:
                errors.append(problem)
        if len(result["src"].lines) != len(result["tgt"].lines):
            continue
        splits[split] = {
            side: [line for number, line in enumerate(result[side].lines, start=1)
                   if not droppable or number not in result["bad_pairs"]]
            for side in ("src", "tgt")
        }
        splits[split]["replaced_separator_lines"] = [
            f"{split}.{side}:{number}" for side in ("src", "tgt")
            for number in result[side].replaced_separator_lines
        ]
        if droppable:
            record_dropped(dropped, result["bad_pairs"])
    if errors:
        raise PrepareError(format_problems(errors, args.drop_bad_train_pairs))
    if not splits["train"]["src"]:
        reason = f"after dropping {dropped['count']} defective pair(s)" if dropped["count"] \
            else "in train.src and train.tgt"
        raise PrepareError([f"no training pair {reason}; training needs at least one"])
    return splits, dropped


def record_dropped(dropped: Dict, bad_pairs: Dict[int, set]) -> None:
    for number in sorted(bad_pairs):
        dropped["count"] += 1
        if len(dropped["lines"]) < MAX_LISTED_LINES:
            dropped["lines"].append(number)
        for kind in bad_pairs[number]:
            dropped["reasons"][kind] = dropped["reasons"].get(kind, 0) + 1
    if dropped["count"]:
        logger.warning("dropped %d defective training pair(s): %s", dropped["count"],
                       ", ".join(f"{kind} {n}" for kind, n in sorted(dropped["reasons"].items())))


def format_problems(problems: List[corpus.Problem], dropping: bool) -> List[str]:
    """Render problems as lines, capped at MAX_REPORTED_PROBLEMS, with a closing hint."""
    lines = [str(problem) for problem in problems[:MAX_REPORTED_PROBLEMS]]
    if len(problems) > MAX_REPORTED_PROBLEMS:
        lines.append(f"... and {len(problems) - MAX_REPORTED_PROBLEMS} more problem(s)")
    if not dropping and any(p.file.startswith("train.") and p.line for p in problems):
        lines.append("fix the files, or pass --drop-bad-train-pairs to drop defective training "
                     "pairs (valid and test pairs are never dropped, so their ids stay aligned)")
    return lines


def segment_source(splits: Dict, vocab_size: int, model_prefix: Path, workers: int) -> None:
    """Train sentencepiece on the training source only and segment every source split in place."""
    import sentencepiece

    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(splits["train"]["src"]), model_prefix=str(model_prefix),
            vocab_size=vocab_size, character_coverage=1.0, num_threads=workers,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise PrepareError([f"sentencepiece training failed for --spm-vocab-size {vocab_size}: "
                            f"{error}; choose another --spm-vocab-size: at least the number of distinct "
                            "source characters, and at most the number of distinct pieces"]) from error
    processor = sentencepiece.SentencePieceProcessor(model_file=f"{model_prefix}.model")
    for split in splits.values():
        split["src"] = [" ".join(processor.encode(line, out_type=str)) for line in split["src"]]


def rewrite_targets(splits: Dict, threshold: int) -> Dict:
    """Replace rare target words in every split; return replacement counts for the report."""
    counts = corpus.count_target_words(splits["train"]["tgt"])
    report = {"threshold": threshold, "train_word_types": len(counts),
              "rare_word_types": sum(1 for n in counts.values() if n < threshold),
              "replaced_tokens": {}}
    for name, split in splits.items():
        replaced_total = 0
        rewritten = []
        for line in split["tgt"]:
            line, replaced = corpus.replace_rare_words(line, counts, threshold)
            rewritten.append(line)
            replaced_total += replaced
        split["tgt"] = rewritten
        report["replaced_tokens"][name] = replaced_total
    return report


def write_lines(path: Path, lines: List[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(line + "\n" for line in lines)


def run_fairseq_preprocess(args: argparse.Namespace, text_dir: Path, dest_dir: Path,
                           splits: Dict) -> List[str]:
    """Run stock fairseq-preprocess on ``text_dir``; return its options without paths."""
    options = ["--source-lang", "src", "--target-lang", "tgt", "--workers", str(args.workers)]
    if args.src_threshold:
        options += ["--thresholdsrc", str(args.src_threshold)]
    command = [sys.executable, "-m", "fairseq_cli.preprocess", *options,
               "--trainpref", str(text_dir / "train"), "--validpref", str(text_dir / "valid"),
               "--destdir", str(dest_dir)]
    if "test" in splits:
        command += ["--testpref", str(text_dir / "test")]
    logger.info("running fairseq-preprocess %s", " ".join(options))
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-15:]
        raise PrepareError([f"fairseq-preprocess failed with exit status "
                            f"{completed.returncode}:", *tail])
    return options


def count_dictionary(path: Path) -> int:
    """Count the symbols of a fairseq dict.txt (the 4 special symbols are not listed there)."""
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def build_output(args: argparse.Namespace, splits: Dict, dropped: Dict, work_dir: Path) -> Dict:
    """Write every output file into ``work_dir`` and return the prepare.json report."""
    report = {"data_dir": str(args.data_dir.resolve()),
              "options": {key: value for key, value in vars(args).items()
                          if key not in ("data_dir", "output_dir")},
              "pairs": {name: len(split["src"]) for name, split in splits.items()},
              "dropped_train_pairs": dropped,
              "replaced_separators": [entry for split in splits.values()
                                      for entry in split["replaced_separator_lines"]]}
    malformed = corpus.malformed_lines(splits["train"]["tgt"])
    report["malformed_train_targets"] = {"count": len(malformed),
                                         "lines": malformed[:MAX_LISTED_LINES]}
    if malformed:
        logger.warning("%d training target(s) are not well formed (unbalanced brackets or not "
                       "exactly one head per span), e.g. kept line %d", len(malformed), malformed[0])

    # Raw valid/test text, for scoring against the references as given.
    for name in ("valid", "test"):
        for side in ("src", "tgt"):
            if name in splits:
                write_lines(work_dir / "raw" / f"{name}.{side}", splits[name][side])

    # Source segmentation and reversal, then target unknowns.
    if args.spm_vocab_size:
        segment_source(splits, args.spm_vocab_size, work_dir / "spm", args.workers)
    if args.reverse_source:
        for split in splits.values():
            split["src"] = [corpus.reverse_tokens(line) for line in split["src"]]
    if args.unk_threshold:
        report["target_unknowns"] = rewrite_targets(splits, args.unk_threshold)

    # Binarize.
    text_dir = work_dir / "text"
    for name, split in splits.items():
        for side in ("src", "tgt"):
            write_lines(text_dir / f"{name}.{side}", split[side])
    report["fairseq_preprocess_options"] = run_fairseq_preprocess(
        args, text_dir, work_dir / "data-bin", splits)
    report["dictionary_sizes"] = {
        side: count_dictionary(work_dir / "data-bin" / f"dict.{side}.txt")
        for side in ("src", "tgt")}
    with open(work_dir / "prepare.json", "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, default=str)
        handle.write("\n")
    return report


def prepare(args: argparse.Namespace) -> Dict:
    """Validate, rewrite and binarize; leave ``args.output_dir`` complete or absent.

    Raises:
        PrepareError: invalid options, defective input or a failing fairseq-preprocess.
    """
    check_options(args)
    splits, dropped = read_splits(args)

    # Build beside the output so the final rename stays on one file system.
    output_dir = args.output_dir.resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    work_dir.chmod(0o777 & ~umask)  # mkdtemp creates the folder private (0700)
    try:
        report = build_output(args, splits, dropped, work_dir)
        replace_folder(work_dir, output_dir)
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return report


def replace_folder(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, moving an existing ``target`` aside and deleting it."""
    if not target.exists():
        source.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    target.rename(old / target.name)
    source.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def summarize(report: Dict, output_dir: Path) -> str:
    pairs = ", ".join(f"{name} {count}" for name, count in report["pairs"].items())
    sizes = report["dictionary_sizes"]
    line = (f"prepared {output_dir}: pairs {pairs}; dictionary sizes src {sizes['src']}, "
            f"tgt {sizes['tgt']} (plus 4 special symbols)")
    if report["dropped_train_pairs"]["count"]:
        line += f"; dropped {report['dropped_train_pairs']['count']} training pair(s)"
    return line


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)


def cli_main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO, stream=sys.stderr)
    # SIGTERM unwinds like Ctrl-C, so the temporary folder is removed.
    previous_handler = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        report = prepare(args)
    except PrepareError as error:
        for line in error.problems:
            print(f"halo-prepare: error: {line}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(summarize(report, args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
