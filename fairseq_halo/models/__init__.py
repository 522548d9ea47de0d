"""Models registered by fairseq-halo."""

from . import halo_lstm  # noqa: F401
from . import halo_modelz  # noqa: F401
