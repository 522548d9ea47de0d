"""Weights-only loading of fairseq checkpoints once ``fairseq_halo`` is imported.

torch >= 2.6 loads with ``weights_only=True`` by default, and fairseq_halo allow-lists exactly the
globals fairseq 0.12 pickles (``argparse.Namespace``, numpy scalars and dtypes), nothing else.
"""

import argparse
import pickle

import numpy
import pytest
import torch
from fairseq import checkpoint_utils

from fairseq_halo import checkpoint


class CustomRecord:
    """A class no allow-list names."""

    def __init__(self, value):
        self.value = value


def fairseq_like_state():
    """A checkpoint state with the globals fairseq stores: Namespace args and numpy scalars."""
    return {
        "args": argparse.Namespace(arch="halo_lstm_small", lr=[0.01], seed=7),
        "cfg": {"model": argparse.Namespace(encoder_embed_dim=16, dropout=0.3)},
        "model": {"decoder.weight": torch.arange(6.0).view(2, 3)},
        "extra_state": {
            "best": numpy.float64(1.5), "count": numpy.int64(3), "flag": numpy.bool_(True),
            "dtype": numpy.dtype("float32"), "ratio": numpy.float32(0.25),
        },
    }


@pytest.fixture
def saved_state(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    checkpoint_utils.torch_persistent_save(fairseq_like_state(), str(path))
    return path


def test_fairseq_state_loads_weights_only(saved_state):
    state = torch.load(saved_state, weights_only=True)

    assert state["args"] == argparse.Namespace(arch="halo_lstm_small", lr=[0.01], seed=7)
    assert state["cfg"]["model"].encoder_embed_dim == 16
    assert torch.equal(state["model"]["decoder.weight"], torch.arange(6.0).view(2, 3))
    assert state["extra_state"]["best"] == numpy.float64(1.5)
    assert state["extra_state"]["count"] == 3
    assert state["extra_state"]["flag"]
    assert state["extra_state"]["dtype"] == numpy.dtype("float32")
    assert state["extra_state"]["ratio"] == numpy.float32(0.25)


def test_default_load_is_weights_only(saved_state):
    # torch.load without weights_only uses the same allow-list.
    state = torch.load(saved_state)

    assert state["extra_state"]["count"] == 3


def test_allow_list_is_what_loads(saved_state):
    # With the allow-list removed, the same file fails on argparse.Namespace.
    saved_globals = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(pickle.UnpicklingError, match="argparse.Namespace"):
            torch.load(saved_state, weights_only=True)
    finally:
        torch.serialization.add_safe_globals(saved_globals)


def test_custom_class_still_rejected(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"record": CustomRecord(3)}, path)

    with pytest.raises(pickle.UnpicklingError, match="Unsupported global") as raised:
        torch.load(path, weights_only=True)
    assert "CustomRecord" in str(raised.value)


def test_allow_list_names_only_expected_modules():
    # argparse.Namespace plus numpy's scalar reconstructor, dtype and dtype classes.
    allowed = checkpoint.checkpoint_globals()
    modules = {getattr(item, "__module__", "") for item in allowed}

    assert argparse.Namespace in allowed
    assert numpy.dtype in allowed
    assert all(module == "argparse" or module.startswith("numpy") for module in modules)


def test_trained_checkpoint_loads_weights_only(trained_run):
    path = trained_run.save_dir / "checkpoint_last.pt"
    state = torch.load(path, weights_only=True)

    assert {"model", "cfg", "optimizer_history", "extra_state"} <= state.keys()
    assert state["optimizer_history"][-1]["criterion_name"] == "HaloCrossEntropyCriterion"
    assert state["optimizer_history"][-1]["num_updates"] > 0


def test_fairseq_loader_reads_trained_checkpoint(trained_run):
    # fairseq's own loader calls torch.load without weights_only.
    state = checkpoint_utils.load_checkpoint_to_cpu(str(trained_run.save_dir / "checkpoint1.pt"))

    assert state["cfg"].model._name == "halo_lstm_small"
    assert state["cfg"].criterion._name == "halo_cross_entropy"
    # checkpoint1.pt is written at the end of epoch 1, so its iterator starts epoch 2.
    assert state["extra_state"]["train_iterator"]["epoch"] == 2
