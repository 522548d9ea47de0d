#!/usr/bin/env python
"""Show where one training update of a benchmark row spends its time, by torch operator.

Usage, from the repository root:

    .venv/bin/python benchmarks/profile_rows.py --rows 1 2f

Each row is built and trained on the fixed batches of ``bench.py``, warmed up, then run once more
under ``torch.profiler``. The script prints, per row, the self CPU time per update of operator
groups (matrix products, recurrent kernels, softmax, dropout and the rest) and of the heaviest
operators. The profiler adds time to every operator call, so a row that makes more calls looks
slower here than in the timings of ``bench.py``. The script prints the number of calls for that
reason.
"""

import argparse
import logging
from collections import defaultdict

import torch

from bench import (
    ROWS,
    add_training_options,
    binarize,
    build_trainer,
    check_row_keys,
    positive_int,
    train_batches,
)

GROUPS = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "fused LSTM layers": ("aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward"),
    "log-softmax": ("aten::_log_softmax", "aten::_log_softmax_backward_data"),
    "dropout masks": ("aten::bernoulli_",),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=["1", "2f"],
                        help="keys of the rows of bench.py to profile (default %(default)s)")
    parser.add_argument("--top", type=positive_int, default=12,
                        help="heaviest torch operators to list (default %(default)s)")
    add_training_options(parser)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_row_keys(parser, args.rows)
    return args


def profile_row(row, data_bin, args):
    """Return ``(groups, operators, calls)``: self CPU milliseconds per update, by group and by
    operator name, and the number of operator calls per update."""
    _, task, trainer = build_trainer(row, data_bin, args)
    batches = train_batches(task, args)
    for sample in batches:
        trainer.train_step([sample])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for sample in batches:
            trainer.train_step([sample])
    events = prof.key_averages()
    operators = {event.key: event.self_cpu_time_total / 1000 / len(batches) for event in events}
    calls = sum(event.count for event in events if event.key.startswith("aten::")) / len(batches)
    return group_times(operators), operators, calls


def group_times(operators: dict) -> dict:
    """Sum operator times into the ``GROUPS``, the rest into "everything else"."""
    groups = defaultdict(float)
    for name, ms in operators.items():
        group = next((g for g, names in GROUPS.items() if name in names), "everything else")
        groups[group] += ms
    return dict(groups)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    data_bin = binarize(args.cache)
    by_key = {row.key: row for row in ROWS}
    for key in args.rows:
        groups, operators, calls = profile_row(by_key[key], data_bin, args)
        total = sum(groups.values())
        print(f"row {key} ({by_key[key].label}): {total:.0f} ms self CPU time and "
              f"{calls:.0f} aten operator calls per update")
        for group in list(GROUPS) + ["everything else"]:
            ms = groups.get(group, 0.0)
            print(f"  {group:<18} {ms:7.0f} ms  {100 * ms / total:5.1f} %")
        print("  heaviest operators:")
        aten = {name: ms for name, ms in operators.items() if name.startswith("aten::")}
        for name, ms in sorted(aten.items(), key=lambda item: -item[1])[:args.top]:
            print(f"    {name:<36} {ms:7.1f} ms")
        print()


if __name__ == "__main__":
    main()
