"""Luong's multiplicative ("general") attention (Luong, Pham and Manning, EMNLP 2015).

score(s_t, h_j) = s_t^T W_a h_j, where s_t is the top decoder state at target step t and h_j the
encoder output at source position j; align = softmax_j(score) over the unpadded positions;
context c_t = sum_j align_tj h_j. The attentional state h~_t = tanh(W_c [c_t; s_t]) is built by
the decoder, since models differ in what they feed it.
"""

from typing import Optional

import torch
import torch.nn as nn


class LuongAttention(nn.Module):
    """Multiplicative attention with the key projection ``W_a`` applied to the source once.

    Projecting the encoder outputs once per sentence (keys = h_j W_a^T) instead of the query at
    every step gives the same scores and lets a whole target sequence attend in one batched
    matrix product.
    """

    def __init__(self, query_size: int, source_size: int):
        super().__init__()
        self.key_proj = nn.Linear(source_size, query_size, bias=False)  # W_a

    def keys(self, encoder_out: torch.Tensor) -> torch.Tensor:
        """Project ``(B, S, source_size)`` encoder outputs to ``(B, S, query_size)`` keys."""
        return self.key_proj(encoder_out)

    def forward(self, s: torch.Tensor, keys: Optional[torch.Tensor], values: torch.Tensor,
                padding_mask: Optional[torch.Tensor] = None):
        """Attend from every query to the source.

        Args:
            s: ``(B, T, query_size)`` decoder states (T may be 1 during incremental decoding).
            keys: ``(B, S, query_size)`` output of :meth:`keys`, or None to apply ``W_a`` to
                the queries instead, which costs less when each call has only a few of them.
            values: ``(B, S, source_size)`` encoder outputs.
            padding_mask: ``(B, S)`` bool, True at padded source positions.

        Returns:
            ``(context, align)``: ``(B, T, source_size)`` and ``(B, T, S)`` float.
        """
        if keys is None:
            query = torch.matmul(s, self.key_proj.weight)  # (B, T, source_size), s_t^T W_a
            scores = torch.bmm(query, values.transpose(1, 2))  # (B, T, S)
        else:
            scores = torch.bmm(s, keys.transpose(1, 2))  # (B, T, S)
        if padding_mask is not None:
            scores = scores.masked_fill(padding_mask.unsqueeze(1), float("-inf"))
        align = torch.softmax(scores.float(), dim=-1).type_as(scores)  # (B, T, S)
        context = torch.bmm(align, values)  # (B, T, source_size)
        return context, align
