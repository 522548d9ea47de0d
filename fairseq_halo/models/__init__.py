"""Models registered by fairseq-halo."""

from . import halo_lstm  # noqa: F401
