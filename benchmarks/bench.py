#!/usr/bin/env python
"""Time stock fairseq and fairseq-halo side by side: per-update time, peak memory and beam search.

Usage, from the repository root:

    .venv/bin/python benchmarks/bench.py --out benchmarks/results/cpu.json
    .venv/bin/python benchmarks/bench.py --device cuda --out benchmarks/results/gpu.json

Every configuration (``ROWS``) is built through fairseq's own option parser, task, model,
criterion and ``Trainer``, and trains on the same fixed batches of the EWT data, which the script
binarizes once into ``benchmarks/cache/``. The timing rounds visit the configurations in turn
(round-robin, starting one further each round), so load from other processes hits every row
alike. Ratios are taken within a round, then summarized by median and interquartile range.
Peak memory is measured afterwards, one fresh subprocess per configuration. benchmarks/README.md
explains every row and column.
"""

import argparse
import copy
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch
import torch.nn.functional as F

from measure import Clock, cpu_model_name, host_reads, measure_peak_memory, output_layer_calls
from report import check_targets, summarize, table

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = REPO.parent / "shared" / "data" / "ewt"
CACHE = REPO / "benchmarks" / "cache"
PLUGIN_DIR = REPO / "fairseq_halo"

# Equal sizes for every row: 256-wide embeddings and states, 2 layers, unidirectional encoders.
LSTM_SIZES = [
    "--encoder-embed-dim", "256", "--encoder-hidden-size", "256", "--encoder-layers", "2",
    "--decoder-embed-dim", "256", "--decoder-hidden-size", "256", "--decoder-layers", "2",
    "--decoder-out-embed-dim", "256",
]
TRANSFORMER_SIZES = [
    "--encoder-embed-dim", "256", "--encoder-ffn-embed-dim", "1024", "--encoder-layers", "2",
    "--encoder-attention-heads", "4", "--decoder-embed-dim", "256",
    "--decoder-ffn-embed-dim", "1024", "--decoder-layers", "2", "--decoder-attention-heads", "4",
]
HALO = ["--criterion", "halo_cross_entropy"]
CROSS_ENTROPY = ["--criterion", "cross_entropy"]


@dataclass
class Row:
    """One configuration of the table; rows with the same ``model`` share a generation timing."""

    key: str
    label: str
    model: str
    args: List[str]


ROWS = [
    Row("1", "lstm + cross_entropy", "lstm", ["--arch", "lstm"] + LSTM_SIZES + CROSS_ENTROPY),
    Row("2", "halo_lstm + cross_entropy", "halo_lstm",
        ["--arch", "halo_lstm"] + LSTM_SIZES + CROSS_ENTROPY),
    Row("2f", "halo_lstm --input-feeding + cross_entropy", "halo_lstm_feed",
        ["--arch", "halo_lstm", "--input-feeding"] + LSTM_SIZES + CROSS_ENTROPY),
    Row("2fn", "halo_lstm --input-feeding --no-residuals + cross_entropy",
        "halo_lstm_feed_plain",
        ["--arch", "halo_lstm", "--input-feeding", "--no-residuals"] + LSTM_SIZES
        + CROSS_ENTROPY),
    Row("3", "halo_lstm + halo_cross_entropy K=1", "halo_lstm",
        ["--arch", "halo_lstm"] + LSTM_SIZES + HALO),
    Row("3k4", "halo_lstm + halo_cross_entropy K=4", "halo_lstm",
        ["--arch", "halo_lstm"] + LSTM_SIZES + HALO + ["--halo-samples", "4"]),
    Row("3k4c", "halo_lstm + halo_cross_entropy K=4, chunks of 512", "halo_lstm",
        ["--arch", "halo_lstm"] + LSTM_SIZES + HALO
        + ["--halo-samples", "4", "--halo-chunk-size", "512"]),
    Row("4", "transformer + halo_cross_entropy gaussian", "transformer",
        ["--arch", "transformer"] + TRANSFORMER_SIZES + HALO + ["--halo-noise", "gaussian"]),
]


def positive_int(text: str) -> int:
    """Parse a count that must be at least 1 (an argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Add the options that pick the training batches and threads (shared with profile_rows)."""
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch intra-op threads on CPU (see README) (default %(default)s)")
    parser.add_argument("--batches", type=positive_int, default=3,
                        help="fixed training batches per row and round (default %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="sentences per training batch (default %(default)s)")
    parser.add_argument("--cache", type=Path, default=CACHE,
                        help="folder for the binarized EWT data (default benchmarks/cache)")


def check_row_keys(parser: argparse.ArgumentParser, keys: List[str]) -> None:
    """Stop with a usage error that lists the choices if a key names no row of ``ROWS``."""
    known = [row.key for row in ROWS]
    unknown = [key for key in keys if key not in known]
    if unknown:
        parser.error(f"unknown row keys {unknown}: choose from {known}, the rows of bench.py")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        usage="%(prog)s --out FILE [options]",
    )
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write the results as JSON to this file (required)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where to train and decode (default %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=7,
                        help="timed rounds over all rows (default %(default)s)")
    parser.add_argument("--warmup-rounds", type=int, default=1,
                        help="untimed rounds before the timed ones (default %(default)s)")
    add_training_options(parser)
    parser.add_argument("--gen-batches", type=positive_int, default=3,
                        help="test batches decoded per model and round (default %(default)s)")
    parser.add_argument("--gen-batch-size", type=positive_int, default=32,
                        help="sentences per decoding batch (default %(default)s)")
    parser.add_argument("--beam", type=positive_int, default=5,
                        help="beam size of the decoding timing (default %(default)s)")
    parser.add_argument("--rows", nargs="+", default=[row.key for row in ROWS],
                        help="keys of the rows to run; row 1 is always run (default %(default)s)")
    parser.add_argument("--skip-memory", action="store_true",
                        help="skip the peak-memory subprocesses (quick timing checks)")
    parser.add_argument("--memory-worker", metavar="KEY",
                        help=argparse.SUPPRESS)  # internal: measure one row's peak memory
    args = parser.parse_args(argv)
    check_row_keys(parser, args.rows)
    if args.warmup_rounds < 0:
        parser.error(f"--warmup-rounds must be at least 0, got {args.warmup_rounds}")
    if args.memory_worker is None:
        if args.out is None:
            parser.error("--out is required: name the JSON file for the results")
        if args.out.is_dir():
            parser.error(f"--out {args.out} is a folder: name a file inside it, such as "
                         f"{args.out / 'cpu.json'}")
    return args


def binarize(cache: Path) -> Path:
    """Binarize EWT with fairseq-preprocess into ``cache`` once; return the data folder."""
    data_bin = cache / "ewt-bin"
    if (data_bin / "test.src-tgt.tgt.bin").exists():
        return data_bin
    if not (DATA_ROOT / "train.src").exists():
        raise FileNotFoundError(f"EWT data not found in {DATA_ROOT}; expected train.src etc.")
    preprocess = Path(sys.executable).with_name("fairseq-preprocess")
    subprocess.run(
        [str(preprocess), "--source-lang", "src", "--target-lang", "tgt",
         "--trainpref", str(DATA_ROOT / "train"), "--validpref", str(DATA_ROOT / "valid"),
         "--testpref", str(DATA_ROOT / "test"), "--destdir", str(data_bin),
         # Tokens seen at least twice: about 14k target and 9k source types.
         "--thresholdsrc", "2", "--thresholdtgt", "2", "--workers", "1"],
        check=True, stdout=subprocess.DEVNULL,
    )
    return data_bin


def build_trainer(row: Row, data_bin: Path, args):
    """Build task, model, criterion and Trainer for ``row`` exactly as fairseq-train would."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer

    argv = [str(data_bin), "--user-dir", str(PLUGIN_DIR), "--task", "translation",
            "--source-lang", "src", "--target-lang", "tgt", "--optimizer", "adam",
            "--lr", "0.001", "--dropout", "0.1", "--seed", "1",
            "--batch-size", str(args.batch_size)] + row.args
    if args.device == "cpu":
        argv.append("--cpu")
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=argv))
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    task.load_dataset("test")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return cfg, task, Trainer(cfg, task, model, criterion)


def train_batches(task, args) -> list:
    """Return the first ``args.batches`` full batches of a seeded shuffled epoch."""
    iterator = task.get_batch_iterator(
        dataset=task.dataset("train"), max_sentences=args.batch_size, seed=1,
        ignore_invalid_inputs=True,
    ).next_epoch_itr(shuffle=True)
    batches = [s for s in iterator if s["target"].size(0) == args.batch_size]
    return batches[:args.batches]


def test_batches(task, args) -> list:
    """Return ``args.gen_batches`` test batches spread evenly from the shortest to the longest."""
    iterator = task.get_batch_iterator(
        dataset=task.dataset("test"), max_sentences=args.gen_batch_size, seed=1,
    ).next_epoch_itr(shuffle=False)
    batches = list(iterator)
    step = max(1, len(batches) // args.gen_batches)
    return batches[step // 2::step][:args.gen_batches]


def time_updates(trainer, batches, clock: Clock) -> dict:
    """Return the mean wall and CPU seconds of one ``trainer.train_step`` over ``batches``."""
    wall = cpu = 0.0
    for sample in batches:
        with clock:
            trainer.train_step([sample])
        wall, cpu = wall + clock.wall, cpu + clock.cpu
    return {"wall": wall / len(batches), "cpu": cpu / len(batches)}


def time_output_layer(model, batches, clock: Clock, device) -> dict:
    """Return the mean wall and CPU seconds of one output-layer pass (projection, log-softmax,
    backward).

    The states are the model's own clean decoder features of each batch. The loss is the summed
    token NLL, so the backward pass reaches the projection's weights and the states.
    """
    pad = model.decoder.dictionary.pad()
    wall = cpu = 0.0
    for sample in batches:
        sample = move(sample, device)
        with torch.no_grad():
            h, _ = model.extract_features(**sample["net_input"])  # (B, T, C)
        h = h.detach().requires_grad_()
        target = sample["target"]  # (B, T)
        model.zero_grad(set_to_none=True)
        with clock:
            logits = model.output_layer(h)  # (B, T, V)
            lprobs = model.get_normalized_probs((logits, None), log_probs=True).float()
            loss = F.nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1),
                              ignore_index=pad, reduction="sum")
            loss.backward()
        wall, cpu = wall + clock.wall, cpu + clock.cpu
    model.zero_grad(set_to_none=True)
    return {"wall": wall / len(batches), "cpu": cpu / len(batches)}


def time_reductions(model, criterion, batches, clock: Clock, device) -> dict:
    """Time what follows the projection on the same logits: log-softmax with the token NLL (the
    floor's) and the Halo class reduction from logits (a noisy pass's), forward and backward.

    Returns:
        ``{"log_softmax_nll": {...}, "class_mass": {...}}``, mean wall and CPU seconds of each.
    """
    from fairseq_halo import halo
    from fairseq_halo.partition import gold_classes

    pad = model.decoder.dictionary.pad()
    totals = {name: {"wall": 0.0, "cpu": 0.0} for name in ("log_softmax_nll", "class_mass")}
    for sample in batches:
        sample = move(sample, device)
        target = sample["target"]  # (B, T)
        with torch.no_grad():
            h, _ = model.extract_features(**sample["net_input"])  # (B, T, C)
            logits = model.output_layer(h).float()  # (B, T, V)
        gold_class = gold_classes(criterion.partition_on(target.device), target)  # (B, T)
        members = criterion.members(target.device)

        scores = logits.clone().requires_grad_()
        with clock:
            lprobs = torch.log_softmax(scores, dim=-1)  # (B, T, V)
            F.nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1), ignore_index=pad,
                       reduction="sum").backward()
        totals["log_softmax_nll"]["wall"] += clock.wall
        totals["log_softmax_nll"]["cpu"] += clock.cpu

        scores = logits.clone().requires_grad_()
        with clock:
            log_q = halo.gold_class_log_mass(scores.unsqueeze(0), gold_class, members,
                                             from_logits=True)  # (1, B, T)
            log_q.sum().backward()
        totals["class_mass"]["wall"] += clock.wall
        totals["class_mass"]["cpu"] += clock.cpu
    return {name: {kind: value / len(batches) for kind, value in total.items()}
            for name, total in totals.items()}


def time_generation(task, generator, model, batches, clock: Clock, device) -> dict:
    """Decode ``batches`` with beam search; return sentences, best-hypothesis tokens, seconds."""
    result = {"sentences": 0, "tokens": 0, "wall": 0.0, "cpu": 0.0}
    for sample in batches:
        sample = move(sample, device)
        with clock:
            hypos = task.inference_step(generator, [model], sample)
        result["wall"] += clock.wall
        result["cpu"] += clock.cpu
        result["sentences"] += len(hypos)
        result["tokens"] += sum(h[0]["tokens"].numel() for h in hypos)
    return result


def move(sample, device):
    from fairseq import utils

    return utils.move_to_cuda(sample) if device == "cuda" else sample


def build_generator(cfg, task, trainer, args, length_ratio: float):
    """Return a frozen copy of the trainer's model, prepared as fairseq-generate does, and its
    beam search generator."""
    model = copy.deepcopy(trainer.model)
    cfg = copy.deepcopy(cfg)
    cfg.generation.beam = args.beam
    # Untrained models rarely emit </s>, so most beams run to this limit, the mean gold ratio.
    cfg.generation.max_len_a = length_ratio
    cfg.generation.max_len_b = 0
    model.prepare_for_inference_(cfg)
    model.eval()
    return model, task.build_generator([model], cfg.generation)


def memory_worker(args) -> dict:
    """Measure one row's peak memory per update, output-layer calls and host reads (subprocess)."""
    row = next(r for r in ROWS if r.key == args.memory_worker)
    _, task, trainer = build_trainer(row, binarize(args.cache), args)
    batches = train_batches(task, args)
    for sample in batches:  # warm-up: optimizer state and lazily built buffers
        trainer.train_step([sample])
    calls = output_layer_calls(trainer.model, lambda: trainer.train_step([batches[0]]))
    peaks = [measure_peak_memory(lambda: trainer.train_step([s]), args.device) for s in batches]

    # Host reads in the training forward and backward pass, past the first batch's checks.
    trainer.model.train()
    sample = move(batches[-1], args.device)
    reads = host_reads(lambda: trainer.criterion(trainer.model, sample)[0].backward())
    trainer.zero_grad()
    return {"peak_mib": max(peaks), "per_batch_mib": peaks, "output_layer_inputs": calls,
            "host_reads": reads}


def run_memory_worker(row: Row, args) -> dict:
    """Run :func:`memory_worker` for ``row`` in a fresh process with a fixed mmap threshold."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", row.key,
               "--device", args.device, "--threads", str(args.threads),
               "--cache", str(args.cache),
               "--batches", str(args.batches), "--batch-size", str(args.batch_size)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"the memory subprocess of row {row.key} failed with exit status {result.returncode} "
            "(--skip-memory times the rows without it). Its last output:\n"
            + result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def rotated(items: list, shift: int) -> list:
    shift %= len(items)
    return items[shift:] + items[:shift]


def timed_rounds(rows, built, batches, generators, gen_batches, args) -> dict:
    """Run warm-up and timed rounds; return per-round wall and CPU times of every measurement."""
    clock = Clock(args.device)
    series = {f"update:{row.key}": [] for row in rows}
    series.update({"floor": [], "log_softmax_nll": [], "class_mass": []})
    series.update({f"generate:{name}": [] for name in generators})
    floor_model = built["2"][2].model if "2" in built else None
    halo_trainer = built["3"][2] if "3" in built else None
    for round_index in range(-args.warmup_rounds, args.rounds):
        started = time.perf_counter()
        measured = {}
        for row in rotated(rows, round_index):
            measured[f"update:{row.key}"] = time_updates(built[row.key][2], batches, clock)
        if floor_model is not None:
            measured["floor"] = time_output_layer(floor_model, batches, clock, args.device)
        if halo_trainer is not None:
            measured.update(time_reductions(halo_trainer.model, halo_trainer.criterion, batches,
                                            clock, args.device))
        for name in rotated(list(generators), round_index):
            task, model, generator = generators[name]
            measured[f"generate:{name}"] = time_generation(
                task, generator, model, gen_batches, clock, args.device)
        if round_index >= 0:
            for key, value in measured.items():
                series[key].append(value)
        print(f"round {round_index + 1}/{args.rounds} ({'warm-up' if round_index < 0 else 'timed'})"
              f": {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return series


def repo_relative(path: Path) -> str:
    """Write ``path`` relative to the repository where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def environment(args, data_bin: Path, batches, task) -> dict:
    """Describe hardware, versions, data and batch shapes for the results file."""
    import fairseq

    vocab = len(task.target_dictionary)
    return {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model_name(), "cpu_count": os.cpu_count(), "threads": args.threads,
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "python": platform.python_version(), "torch": torch.__version__,
        "fairseq": fairseq.__version__,
        "source_vocab": len(task.source_dictionary), "target_vocab": vocab,
        "data": repo_relative(data_bin),
        "train_batches": [list(s["target"].shape) for s in batches],
        "logits_mib": [s["target"].numel() * vocab * 4 / 2**20 for s in batches],
        "args": {k: (repo_relative(v) if isinstance(v, Path) else v)
                 for k, v in vars(args).items()},
    }


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # fairseq logs every setup step at INFO
    if args.memory_worker:
        print(json.dumps(memory_worker(args)))
        return

    # Create the output folder now, so that an unusable --out fails before any measuring.
    args.out.parent.mkdir(parents=True, exist_ok=True)

    # Build every row, the fixed batches and one generator per model.
    data_bin = binarize(args.cache)
    rows = [row for row in ROWS if row.key == "1" or row.key in args.rows]
    built = {row.key: build_trainer(row, data_bin, args) for row in rows}
    task = built["1"][1]
    batches, gen_batches = train_batches(task, args), test_batches(task, args)
    train = task.dataset("train")
    length_ratio = round(float(train.tgt_sizes.sum() / train.src_sizes.sum()), 2)
    generators = {}
    for row in rows:
        if row.model not in generators:
            cfg, row_task, trainer = built[row.key]
            generators[row.model] = (row_task,) + build_generator(
                cfg, row_task, trainer, args, length_ratio)

    # Interleaved timing, then peak memory, one subprocess per row.
    series = timed_rounds(rows, built, batches, generators, gen_batches, args)
    memory = {row.key: {"peak_mib": None} for row in rows}  # None: not measured
    for row in rows if not args.skip_memory else []:
        memory[row.key] = run_memory_worker(row, args)
        print(f"memory of row {row.key}: {memory[row.key]['peak_mib']:.0f} MiB", file=sys.stderr)

    summary = summarize(series, rows)
    summary["targets"] = {kind: check_targets(summary, kind) for kind in ("cpu", "wall")}
    results = {"environment": environment(args, data_bin, batches, task),
               "generation_max_len_a": length_ratio,
               "rows": [vars(row) for row in rows], "memory": memory, "series": series,
               "summary": summary}
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results written to {args.out}", file=sys.stderr)
    for kind in ("cpu", "wall"):
        print(table(summary, memory, rows, kind) + "\n")
        for name, check in summary["targets"][kind].items():
            relation = "<=" if check["at_most"] else ">="
            print(f"{'holds' if check['holds'] else 'MISSED'}: {name} "
                  f"{check['median']:.2f} ({relation} {check['limit']})")
        print()


if __name__ == "__main__":
    main()
