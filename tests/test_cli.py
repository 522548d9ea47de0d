"""End to end through fairseq's command-line tools with ``--user-dir`` on the seeded toy corpus.

One two-epoch training run is shared by all tests (the ``trained_run`` fixture of conftest.py).
Every tool runs without variables that switch torch's weights-only loading off, and with an
absolute ``--user-dir`` from a working directory other than the package's parent.
"""

import re
import shutil
import subprocess
import sys
from argparse import Namespace

import pytest
import torch
from fairseq import utils

from conftest import (
    PACKAGE_DIR,
    TOY_CORPUS_SIZES,
    TRAIN_BATCH_SIZE,
    cli_environment,
    json_records,
    run_tool,
    train_arguments,
)

UPDATES_PER_EPOCH = -(-TOY_CORPUS_SIZES["train"] // TRAIN_BATCH_SIZE)


def records_with(output, key):
    return [record for record in json_records(output) if key in record]


def run_python(code, cwd):
    """Run ``python -c code`` in a fresh interpreter of this environment and return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
        env=cli_environment(),
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"python -c exited with {result.returncode}:\n{output[-3000:]}"
    return result.stdout


# Training


def test_train_logs_every_loss(trained_run):
    epochs = records_with(trained_run.log, "train_loss")

    assert [int(record["epoch"]) for record in epochs] == [1, 2]
    for key in ("train_nll_loss", "train_halo_loss", "train_ppl"):
        assert key in epochs[0], key
    assert int(epochs[-1]["train_num_updates"]) == 2 * UPDATES_PER_EPOCH


def test_validation_loss_moves_between_epochs(trained_run):
    # A criterion that did not log `loss` would leave valid_loss at -1 in every epoch.
    valid = records_with(trained_run.log, "valid_loss")
    losses = [float(record["valid_loss"]) for record in valid]

    assert [int(record["epoch"]) for record in valid] == [1, 2]
    assert all(loss > 0 for loss in losses)
    assert losses[0] != losses[1]


def test_best_checkpoint_has_lowest_loss(trained_run):
    valid = [float(record["valid_loss"]) for record in records_with(trained_run.log, "valid_loss")]
    best = torch.load(trained_run.save_dir / "checkpoint_best.pt", weights_only=True)

    assert best["extra_state"]["val_loss"] == pytest.approx(min(valid), abs=1e-3)


def test_seeded_training_reproducible(trained_run, tmp_path):
    # One more epoch-1 run with the same --seed logs the same losses, update by update.
    log = run_tool("fairseq-train", *train_arguments(trained_run.data_dir, tmp_path, max_epoch=1),
                   cwd=tmp_path)
    first = [record["loss"] for record in records_with(trained_run.log, "loss")
             if int(record["epoch"]) == 1]
    again = [record["loss"] for record in records_with(log, "loss")]

    assert len(first) == UPDATES_PER_EPOCH
    assert again == first
    assert records_with(log, "valid_loss")[0]["valid_loss"] == \
        records_with(trained_run.log, "valid_loss")[0]["valid_loss"]


@pytest.fixture(scope="module")
def resumed_run(trained_run, tmp_path_factory):
    """Copy checkpoint_last.pt of the shared run into a new folder and train a third epoch."""
    save_dir = tmp_path_factory.mktemp("resumed")
    shutil.copy(trained_run.save_dir / "checkpoint_last.pt", save_dir / "checkpoint_last.pt")
    log = run_tool("fairseq-train", *train_arguments(trained_run.data_dir, save_dir, max_epoch=3),
                   cwd=save_dir)
    return Namespace(save_dir=save_dir, log=log)


def test_resume_continues_update_count(resumed_run):
    saved_updates = 2 * UPDATES_PER_EPOCH
    log = resumed_run.log
    updates = [int(record["num_updates"]) for record in records_with(log, "num_updates")]
    loaded = re.search(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch (\d+) @ (\d+) updates\)",
                       log)

    assert loaded, log[-3000:]
    # The saved iterator finished epoch 2, so the checkpoint resumes at the start of epoch 3.
    assert int(loaded.group(1)) == 3
    assert int(loaded.group(2)) == saved_updates
    assert updates == list(range(saved_updates + 1, saved_updates + UPDATES_PER_EPOCH + 1))
    assert [int(record["epoch"]) for record in records_with(log, "train_loss")] == [3]


def test_resume_keeps_optimizer_state(resumed_run):
    # Adam's step count in the new checkpoint covers all 3 epochs, not only the resumed one.
    state = torch.load(resumed_run.save_dir / "checkpoint_last.pt", weights_only=True)
    steps = {int(param_state["step"])
             for param_state in state["last_optimizer_state"]["state"].values()}

    assert steps == {3 * UPDATES_PER_EPOCH}


# Decoding


def test_generate_beam_every_sentence(trained_run, tmp_path):
    # --batch-size 3 with --required-batch-size-multiple 1 keeps all 7 test sentences.
    output = run_tool(
        "fairseq-generate", trained_run.data_dir, "--user-dir", PACKAGE_DIR,
        "--path", trained_run.save_dir / "checkpoint_last.pt", "--gen-subset", "test",
        "--beam", "5", "--batch-size", "3", "--required-batch-size-multiple", "1", "--cpu",
        cwd=tmp_path,
    )
    sources = dict(re.findall(r"^S-(\d+)\t(.*)$", output, re.MULTILINE))
    hypothesis_ids = re.findall(r"^H-(\d+)\t", output, re.MULTILINE)
    expected_sources = {str(i): " ".join(source)
                        for i, (source, _) in enumerate(trained_run.corpus["test"])}

    assert sources == expected_sources
    assert sorted(map(int, hypothesis_ids)) == list(range(TOY_CORPUS_SIZES["test"]))


def test_interactive_reads_stdin(trained_run, tmp_path):
    lines = ["w1 w3 w2", "w6 w4 w5 w7"]
    output = run_tool(
        "fairseq-interactive", trained_run.data_dir, "--user-dir", PACKAGE_DIR,
        "--path", trained_run.save_dir / "checkpoint_last.pt",
        "--source-lang", "src", "--target-lang", "tgt", "--beam", "5", "--cpu",
        cwd=tmp_path, stdin="".join(line + "\n" for line in lines),
    )

    assert re.findall(r"^S-(\d+)\t(.*)$", output, re.MULTILINE) == [("0", lines[0]),
                                                                   ("1", lines[1])]
    assert re.findall(r"^H-(\d+)\t", output, re.MULTILINE) == ["0", "1"]


# --user-dir


def test_user_dir_after_import_registers_once(tmp_path):
    output = run_python(
        "from argparse import Namespace\n"
        "import fairseq_halo\n"
        "from fairseq import utils\n"
        "from fairseq.criterions import CRITERION_REGISTRY\n"
        "from fairseq.models import ARCH_MODEL_REGISTRY\n"
        f"utils.import_user_module(Namespace(user_dir={str(PACKAGE_DIR)!r}))\n"
        "print(CRITERION_REGISTRY['halo_cross_entropy'].__module__)\n"
        "print(ARCH_MODEL_REGISTRY['halo_lstm_small'].__module__)\n",
        cwd=tmp_path,
    )

    assert output.split() == ["fairseq_halo.criterions.halo_cross_entropy",
                              "fairseq_halo.models.halo_lstm"]


def test_user_dir_after_importing_copy(tmp_path):
    # A copied plugin folder under another name whose __init__ imports the original package.
    copy = tmp_path / "halo_copy"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "__init__.py").write_text(
        '"""A copy of the plugin that defers to the installed package."""\n'
        "import fairseq_halo  # noqa: F401\n", encoding="utf-8")
    output = run_python(
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from argparse import Namespace\n"
        "import halo_copy\n"
        "from fairseq import utils\n"
        "from fairseq.criterions import CRITERION_REGISTRY\n"
        f"utils.import_user_module(Namespace(user_dir={str(PACKAGE_DIR)!r}))\n"
        f"utils.import_user_module(Namespace(user_dir={str(copy)!r}))\n"
        "print(CRITERION_REGISTRY['halo_cross_entropy'].__module__)\n",
        cwd=tmp_path,
    )

    assert output.split() == ["fairseq_halo.criterions.halo_cross_entropy"]


def test_relative_user_dir_resolves_against_cwd(tmp_path, monkeypatch):
    # fairseq 0.12 makes --user-dir absolute against the working directory (os.path.abspath),
    # so a relative path is not found from any other folder. The tools need an absolute path.
    monkeypatch.chdir(tmp_path)

    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / PACKAGE_DIR.name))):
        utils.import_user_module(Namespace(user_dir=PACKAGE_DIR.name))


def test_relative_user_dir_from_parent(monkeypatch):
    # From the package's parent folder, the same relative path names the package itself.
    monkeypatch.chdir(PACKAGE_DIR.parent)
    utils.import_user_module(Namespace(user_dir=PACKAGE_DIR.name))

    assert str(PACKAGE_DIR) in utils.import_user_module.memo
