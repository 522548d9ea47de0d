"""Shared fixtures: target dictionaries built in code, tiny halo_lstm models and batches, and a
seeded toy corpus that is preprocessed and trained once through the fairseq command-line tools.

Toy rule: source token ``wN`` maps to ``wN:p`` when N is divisible by 3, else to ``wN:a``, and
every target is wrapped in ``^(((`` ... ``)))$``.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fairseq.data import Dictionary, LanguagePairDataset

import fairseq_halo
from fairseq_halo.models.halo_lstm import HaloLSTMConfig, HaloLSTMModel

PACKAGE_DIR = Path(fairseq_halo.__file__).resolve().parent
BIN_DIR = Path(sys.executable).parent

# Source words w1..w12. Under the toy rule, w3, w6, w9 and w12 become predicate words.
TOY_VOCABULARY = [f"w{n}" for n in range(1, 13)]

# Variables that would turn torch's weights-only loading off. The tools must work without them.
WEIGHTS_ONLY_OVERRIDES = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)

# Tiny halo_lstm sizes for the command-line runs.
TINY_MODEL_FLAGS = [
    "--arch", "halo_lstm_small",
    "--encoder-embed-dim", "16", "--encoder-hidden-size", "16",
    "--decoder-embed-dim", "16", "--decoder-hidden-size", "16",
    "--decoder-out-embed-dim", "16",
]
TRAIN_SEED = "7"
TRAIN_BATCH_SIZE = 20
TOY_CORPUS_SIZES = {"train": 100, "valid": 10, "test": 7}


def toy_target(source_tokens):
    """Apply the toy rule to a list of source tokens."""
    tagged = [f"{token}:p" if int(token[1:]) % 3 == 0 else f"{token}:a" for token in source_tokens]
    return ["^((("] + tagged + [")))$"]


def toy_pairs(count, rng):
    """Draw ``count`` (source, target) token lists of 2 to 6 source words."""
    pairs = []
    for _ in range(count):
        source = [rng.choice(TOY_VOCABULARY) for _ in range(rng.randint(2, 6))]
        pairs.append((source, toy_target(source)))
    return pairs


def write_toy_corpus(directory, seed=0, sizes=None):
    """Write ``{train,valid,test}.{src,tgt}`` under ``directory`` and return the pairs per split."""
    rng = random.Random(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    corpus = {}
    for split, count in (sizes or TOY_CORPUS_SIZES).items():
        pairs = toy_pairs(count, rng)
        (directory / f"{split}.src").write_text(
            "".join(" ".join(source) + "\n" for source, _ in pairs), encoding="utf-8")
        (directory / f"{split}.tgt").write_text(
            "".join(" ".join(target) + "\n" for _, target in pairs), encoding="utf-8")
        corpus[split] = pairs
    return corpus


def make_dictionary(symbols, padding_factor=8):
    """Build a finalized fairseq Dictionary holding ``symbols`` (plus the four special ones)."""
    dictionary = Dictionary()
    for symbol in symbols:
        dictionary.add_symbol(symbol)
    dictionary.finalize(padding_factor=padding_factor)
    return dictionary


def toy_target_symbols():
    """Return the target-side vocabulary of the toy rule: the two brackets and w1..w12 tagged."""
    return toy_target(TOY_VOCABULARY)


@pytest.fixture
def build_dictionary():
    """Return :func:`make_dictionary`, the factory of finalized dictionaries."""
    return make_dictionary


@pytest.fixture
def toy_task():
    """An object with the two dictionaries a model and a criterion read from a task."""
    return SimpleNamespace(
        source_dictionary=make_dictionary(TOY_VOCABULARY),
        target_dictionary=make_dictionary(toy_target_symbols()),
    )


@pytest.fixture
def build_model(toy_task):
    """Return a factory of tiny ``halo_lstm`` models seeded with ``torch.manual_seed(0)``.

    Sizes: embeddings 6, hidden 5, attentional state C = 4, 2 layers, no dropout; keyword
    arguments override fields of :class:`HaloLSTMConfig`.
    """

    def build(**overrides):
        settings = dict(
            encoder_embed_dim=6, encoder_hidden_size=5, encoder_layers=2,
            decoder_embed_dim=6, decoder_hidden_size=5, decoder_out_embed_dim=4,
            decoder_layers=2, dropout=0.0,
        )
        settings.update(overrides)
        torch.manual_seed(0)
        return HaloLSTMModel.build_model(HaloLSTMConfig(**settings), toy_task)

    return build


# Tensor methods that copy values to Python, each a device sync on GPU.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def count_host_reads(monkeypatch):
    """Return a function that runs a callable and lists, in order, the host reads it made."""

    def count(step):
        reads = []
        for name in HOST_READS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _name=name, _original=original, **kwargs):
                reads.append(_name)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        try:
            step()
        finally:
            monkeypatch.undo()
        return reads

    return count


@pytest.fixture
def make_batch(toy_task):
    """Return a factory that collates source lines with their toy targets into a fairseq sample.

    Sources are left-padded and targets right-padded, as fairseq's translation task does.
    """

    def make(source_lines, target_lines=None):
        src_dict, tgt_dict = toy_task.source_dictionary, toy_task.target_dictionary
        if target_lines is None:
            target_lines = [" ".join(toy_target(line.split())) for line in source_lines]
        sources = [src_dict.encode_line(line, add_if_not_exist=False).long()
                   for line in source_lines]
        targets = [tgt_dict.encode_line(line, add_if_not_exist=False).long()
                   for line in target_lines]
        dataset = LanguagePairDataset(
            sources, [len(s) for s in sources], src_dict,
            targets, [len(t) for t in targets], tgt_dict, shuffle=False,
        )
        return dataset.collater([dataset[i] for i in range(len(sources))])

    return make


# Command-line runs


def cli_environment():
    """Return the current environment without variables that switch weights-only loading off."""
    env = dict(os.environ)
    for name in WEIGHTS_ONLY_OVERRIDES:
        env.pop(name, None)
    return env


def run_tool(tool, *arguments, cwd=None, stdin=None, timeout=240):
    """Run a fairseq command-line tool from this environment and return its combined output.

    Fails the test with the output's tail when the tool exits with a non-zero status.
    """
    command = [str(BIN_DIR / tool)] + [str(argument) for argument in arguments]
    result = subprocess.run(
        command, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout,
        env=cli_environment(),
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"{tool} exited with status {result.returncode}:\n{output[-4000:]}")
    return output


def json_records(output):
    """Parse the JSON progress lines that ``--log-format json`` writes into a list of dicts."""
    records = []
    for line in output.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def train_arguments(data_dir, save_dir, max_epoch):
    """Return the fairseq-train arguments of the toy runs (seeded, CPU, JSON logs)."""
    return [
        data_dir, "--user-dir", PACKAGE_DIR, *TINY_MODEL_FLAGS,
        "--criterion", "halo_cross_entropy", "--halo-weight", "1.0",
        "--optimizer", "adam", "--lr", "0.01",
        "--batch-size", TRAIN_BATCH_SIZE, "--required-batch-size-multiple", "1",
        "--max-epoch", max_epoch, "--seed", TRAIN_SEED, "--cpu", "--num-workers", "0",
        "--log-format", "json", "--log-interval", "1", "--save-dir", save_dir,
    ]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """Preprocess the toy corpus and train two epochs with ``halo_cross_entropy``, once.

    Returns:
        A namespace with ``corpus`` (the pairs per split), ``text_dir``, ``data_dir``,
        ``save_dir`` and ``log`` (fairseq-train's output).
    """
    root = tmp_path_factory.mktemp("toy")
    text_dir, data_dir, save_dir = root / "text", root / "data-bin", root / "checkpoints"
    corpus = write_toy_corpus(text_dir, seed=0)
    run_tool(
        "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", text_dir / "train", "--validpref", text_dir / "valid",
        "--testpref", text_dir / "test", "--destdir", data_dir, "--workers", "1", cwd=root,
    )
    log = run_tool("fairseq-train", *train_arguments(data_dir, save_dir, max_epoch=2), cwd=root)
    return SimpleNamespace(
        corpus=corpus, text_dir=text_dir, data_dir=data_dir, save_dir=save_dir, log=log,
    )
