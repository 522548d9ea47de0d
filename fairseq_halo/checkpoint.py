"""Allow-list the globals of fairseq checkpoints for ``torch.load(weights_only=True)``.

Since torch 2.6, ``torch.load`` unpickles only allow-listed globals by default, and fairseq
0.12 calls it without ``weights_only``, so loading a checkpoint that ``fairseq-train`` just wrote
fails with "Unsupported global: argparse.Namespace". Importing this module adds exactly the
globals that fairseq stores in a checkpoint; weights-only loading stays on for everything else.
"""

import argparse
import logging

import torch

logger = logging.getLogger(__name__)


def checkpoint_globals():
    """Return the classes and functions that fairseq 0.12 pickles into checkpoints.

    ``argparse.Namespace`` contains legacy ``args`` and the model configuration of architectures
    registered without a dataclass; numpy scalars and dtypes appear in the saved meters and
    best-validation values.
    """
    import numpy

    allowed = [argparse.Namespace]
    numpy_core = getattr(numpy, "_core", None) or numpy.core
    allowed.append(numpy_core.multiarray.scalar)
    allowed.append(numpy.dtype)
    # numpy >= 1.25 pickles dtypes through their classes (numpy.dtypes.Float64DType, ...).
    dtypes = getattr(numpy, "dtypes", None)
    if dtypes is not None:
        allowed.extend(
            getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")
        )
    return allowed


def allow_fairseq_checkpoints() -> None:
    """Register :func:`checkpoint_globals` with torch (a no-op on torch < 2.4)."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:
        return
    add_safe_globals(checkpoint_globals())


allow_fairseq_checkpoints()
