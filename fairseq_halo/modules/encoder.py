"""The LSTM encoder shared by ``halo_lstm`` and the selective-decoding models."""

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import FairseqEncoder

from .lstm_stack import ResidualLSTMStack


def left_to_right_padding(tokens: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """Move the padding of ``(B, S)`` left-padded tokens to the right of each row.

    The result equals that of fairseq's ``utils.convert_padding_direction(..., left_to_right=True)``
    without its early returns, which read tensor values on the host and so cost a device sync each.
    """
    S = tokens.size(1)
    pad_mask = tokens.eq(padding_idx)  # (B, S)
    # As fairseq does, rotate the rows only if some row starts with padding.
    num_pads = pad_mask.sum(dim=1, keepdim=True) * pad_mask[:, 0].any()  # (B, 1)
    index = (torch.arange(S, device=tokens.device) + num_pads) % S  # (B, S)
    return tokens.gather(1, index)  # (B, S)


class EncoderOut(NamedTuple):
    """Encoder outputs handed to the decoder.

    Attributes:
        outputs: ``(S, B, C_enc)`` top-layer outputs, ``C_enc = hidden * directions``.
        final_h: ``(L, B, hidden)`` final forward-direction hidden state of each layer.
        final_c: ``(L, B, hidden)`` final forward-direction cell state of each layer.
        padding_mask: ``(S, B)`` bool, True at padded positions.
    """

    outputs: torch.Tensor
    final_h: torch.Tensor
    final_c: torch.Tensor
    padding_mask: torch.Tensor


class HaloLSTMEncoder(FairseqEncoder):
    """Embedding, dropout and a (bidirectional) residual LSTM stack over the source."""

    def __init__(self, dictionary, embed_dim: int, hidden_size: int, num_layers: int,
                 bidirectional: bool, dropout_in: float, dropout_out: float, residual: bool,
                 left_pad: bool = True, max_positions: int = int(1e5)):
        super().__init__(dictionary)
        self.padding_idx = dictionary.pad()
        self.embed_tokens = nn.Embedding(len(dictionary), embed_dim, padding_idx=self.padding_idx)
        nn.init.uniform_(self.embed_tokens.weight, -0.1, 0.1)
        nn.init.zeros_(self.embed_tokens.weight[self.padding_idx])
        self.dropout_in = dropout_in
        self.lstm = ResidualLSTMStack(
            embed_dim, hidden_size, num_layers, bidirectional=bidirectional,
            dropout=dropout_out, residual=residual,
        )
        self.output_units = self.lstm.output_size
        self.left_pad = left_pad
        self._max_positions = max_positions

    def forward(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor, **kwargs):
        """Encode a batch of source sentences.

        Args:
            src_tokens: ``(B, S)`` int64 source ids, left-padded unless ``left_pad`` is False.
            src_lengths: ``(B,)`` int64 number of real tokens per sentence.

        Returns:
            :class:`EncoderOut`.
        """
        if self.left_pad:
            # Packed sequences need right padding.
            src_tokens = left_to_right_padding(src_tokens, self.padding_idx)
        x = self.embed_tokens(src_tokens)  # (B, S, E)
        x = F.dropout(x, p=self.dropout_in, training=self.training)
        x = x.transpose(0, 1)  # (S, B, E)

        # NOTE: packing needs the lengths on the CPU, one device sync per batch.
        outputs, final = self.lstm(x, lengths=src_lengths)  # (S, B, C_enc)
        final_h = torch.stack([h[0] for h, _ in final])  # (L, B, hidden), forward direction
        final_c = torch.stack([c[0] for _, c in final])  # (L, B, hidden)
        padding_mask = src_tokens.eq(self.padding_idx).t()  # (S, B)
        return EncoderOut(outputs, final_h, final_c, padding_mask)

    def reorder_encoder_out(self, encoder_out: EncoderOut, new_order: torch.Tensor):
        """Select batch entries ``new_order`` (beam search)."""
        return EncoderOut(
            encoder_out.outputs.index_select(1, new_order),
            encoder_out.final_h.index_select(1, new_order),
            encoder_out.final_c.index_select(1, new_order),
            encoder_out.padding_mask.index_select(1, new_order),
        )

    def max_positions(self):
        return self._max_positions
