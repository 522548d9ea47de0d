"""Building blocks shared by the ``halo_lstm`` and selective-decoding models."""

from .attention import LuongAttention
from .encoder import HaloLSTMEncoder
from .lstm_stack import ResidualLSTMStack

__all__ = ["HaloLSTMEncoder", "LuongAttention", "ResidualLSTMStack"]
