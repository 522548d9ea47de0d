"""A stack of LSTM layers with residual connections between layers.

A layer's input is added to its output wherever the two sizes match (Wu et al. 2016 use the
same residual wiring in GNMT). This differs from the ``residuals`` option of fairseq's stock
``LSTMDecoder``, which adds the same layer's hidden state from the previous time step.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

State = Tuple[torch.Tensor, torch.Tensor]


class ResidualLSTMStack(nn.Module):
    """``num_layers`` single-layer LSTMs, run over whole sequences or one step at a time.

    Both modes use the same parameters: a whole sequence goes through each layer's fused
    ``nn.LSTM`` kernel, one step through ``torch.lstm_cell`` with that layer's weights.

    Args:
        input_size: feature size of the first layer's input.
        hidden_size: hidden size of every layer (per direction).
        bidirectional: run each layer in both directions (sequence mode only); the output of a
            layer is then ``2 * hidden_size`` wide.
        dropout: dropout on each layer's output, before the residual addition.
        residual: add a layer's input to its output where the sizes match.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int,
                 bidirectional: bool = False, dropout: float = 0.0, residual: bool = True):
        super().__init__()
        directions = 2 if bidirectional else 1
        self.hidden_size = hidden_size
        self.output_size = hidden_size * directions
        self.bidirectional = bidirectional
        self.dropout = dropout
        self.layers = nn.ModuleList()
        self.residual = []
        for i in range(num_layers):
            layer_input = input_size if i == 0 else self.output_size
            self.layers.append(nn.LSTM(layer_input, hidden_size, bidirectional=bidirectional))
            self.residual.append(residual and layer_input == self.output_size)

    def forward(self, x: torch.Tensor, state: Optional[List[State]] = None,
                lengths: Optional[torch.Tensor] = None):
        """Run the stack over whole sequences.

        Args:
            x: ``(T, B, input_size)`` inputs.
            state: per layer, the initial ``(h, c)``, each ``(directions, B, hidden_size)``;
                zeros when None.
            lengths: ``(B,)`` int64 lengths of right-padded sequences. When given, padded steps
                are skipped (packed sequences), so the final states are those of each
                sequence's last real step.

        Returns:
            ``(y, final)``: ``(T, B, output_size)`` outputs of the top layer and, per layer,
            its final ``(h, c)``.
        """
        final = []
        if lengths is not None:
            # Packing needs the lengths on the CPU, one copy (a device sync on GPU) per batch.
            # Sorting here lets the order be restored on the device, where torch's
            # pad_packed_sequence would copy it to the CPU in every layer.
            sorted_lengths, order = torch.sort(lengths.cpu(), descending=True)
            order = order.to(x.device)  # (B,)
            restore = torch.argsort(order)  # (B,)
        for i, layer in enumerate(self.layers):
            hx = state[i] if state is not None else None
            if lengths is not None:
                if hx is not None:
                    hx = tuple(s.index_select(1, order) for s in hx)
                packed = nn.utils.rnn.pack_padded_sequence(x.index_select(1, order), sorted_lengths)
                y, (h, c) = layer(packed, hx)
                y, _ = nn.utils.rnn.pad_packed_sequence(y, total_length=x.size(0))
                y, h, c = (t.index_select(1, restore) for t in (y, h, c))
            else:
                y, (h, c) = layer(x, hx)
            y = F.dropout(y, p=self.dropout, training=self.training)  # (T, B, output_size)
            x = y + x if self.residual[i] else y
            final.append((h, c))
        return x, final

    def step(self, x: torch.Tensor, state: List[State]):
        """Advance a unidirectional stack by one time step.

        Args:
            x: ``(B, input_size)`` input of this step.
            state: per layer, ``(h, c)`` each ``(B, hidden_size)``.

        Returns:
            ``(y, new_state)``: ``(B, hidden_size)`` top-layer output and the new states.
        """
        assert not self.bidirectional, "a bidirectional stack cannot run step by step"
        new_state = []
        for i, layer in enumerate(self.layers):
            h, c = torch.lstm_cell(
                x, state[i], layer.weight_ih_l0, layer.weight_hh_l0,
                layer.bias_ih_l0, layer.bias_hh_l0,
            )
            y = F.dropout(h, p=self.dropout, training=self.training)  # (B, hidden_size)
            x = y + x if self.residual[i] else y
            new_state.append((h, c))
        return x, new_state
