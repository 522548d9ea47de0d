"""Print the results table of scripts/run.sh from the score.json of each run folder.

Usage: python scripts/results_table.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is named ``<config>-seed<N>`` and contains ``score.json`` (``halo-score --json``) and
optionally ``train_seconds`` and ``train.log``, whose last ``best_loss`` is the lowest validation
loss (bits per target token, without the Halo term). With several seeds of a configuration, a mean
row and a row with the sample standard deviation follow. When the run folders lie in more than one
parent folder (say runs/zh-modelz and runs/zh-modelp), each configuration is named
``<parent>/<config>``, so that runs of different models are not averaged together.
"""

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Optional

COLUMNS = (
    ("BLEU", ("bleu", "score")),
    ("F1 PRED", ("f1", "predicate", "f1")),
    ("F1 ARG", ("f1", "argument", "f1")),
    ("recoverability", ("recoverability", "score")),
)

LABELS = [label for label, _ in COLUMNS] + ["valid loss", "train s"]


def lookup(report: Dict, keys) -> Optional[float]:
    """Follow ``keys`` into a nested report; None where a key is missing."""
    value = report
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) else None


def read_row(run_dir: Path, with_parent: bool = False) -> Dict:
    config, _, seed = run_dir.name.rpartition("-seed")
    config = config or run_dir.name
    if with_parent:
        config = f"{run_dir.resolve().parent.name}/{config}"
    row = {"config": config, "seed": seed}
    score_file = run_dir / "score.json"
    report = json.loads(score_file.read_text(encoding="utf-8")) if score_file.is_file() else {}
    for label, keys in COLUMNS:
        row[label] = lookup(report, keys)
    seconds_file = run_dir / "train_seconds"
    row["train s"] = int(seconds_file.read_text()) if seconds_file.is_file() else None
    row["valid loss"] = best_valid_loss(run_dir / "train.log")
    return row


def best_valid_loss(log_file: Path) -> Optional[float]:
    """Return the last ``best_loss`` that fairseq-train logged, or None."""
    if not log_file.is_file():
        return None
    found = re.findall(r"best_loss ([0-9.]+)", log_file.read_text(encoding="utf-8"))
    return float(found[-1]) if found else None


def format_cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def mean_rows(rows: List[Dict]) -> List[Dict]:
    """Return a mean and a standard-deviation row per configuration with several seeds."""
    summaries = []
    for config in dict.fromkeys(row["config"] for row in rows):
        group = [row for row in rows if row["config"] == config]
        if len(group) < 2:
            continue
        mean = {"config": config, "seed": "mean"}
        spread = {"config": config, "seed": "sd"}
        for label in LABELS:
            values = [row[label] for row in group if row[label] is not None]
            complete = len(values) == len(group)
            mean[label] = float(statistics.mean(values)) if complete else None
            spread[label] = float(statistics.stdev(values)) if complete else None
        summaries += [mean, spread]
    return summaries


def format_table(rows: List[Dict]) -> str:
    headers = ["config", "seed"] + LABELS
    cells = [[format_cell(row[header]) for header in headers] for row in rows]
    widths = [max(len(header), *(len(line[i]) for line in cells))
              for i, header in enumerate(headers)]
    lines = ["  ".join(header.rjust(width) for header, width in zip(headers, widths))]
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def main(argv: List[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    run_dirs = [Path(arg) for arg in argv]
    with_parent = len({run_dir.resolve().parent for run_dir in run_dirs}) > 1
    rows = [read_row(run_dir, with_parent) for run_dir in run_dirs]
    print(format_table(rows + mean_rows(rows)))
    print("Scores are percentages on the test set; n/a: no score (the run failed or was skipped).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
