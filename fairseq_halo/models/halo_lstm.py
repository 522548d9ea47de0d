"""The ``halo_lstm`` architecture: an attentional LSTM encoder-decoder with ModelP's improvements.

Encoder: embeddings and a (bidirectional) LSTM stack. Decoder: an LSTM stack started from the
encoder's final forward states, Luong's multiplicative attention, and the tanh attentional state
h~_t = tanh(W_c [c_t; s_t]), which is the feature vector the output layer projects and the state
``h`` that ``halo_cross_entropy`` perturbs, so it lies in (-1, 1)^C. Stacked layers have residual
connections. Dropout acts on embeddings, on each LSTM layer's output and on [c_t; s_t] before W_c,
never after the tanh. Without input feeding, training runs each decoder layer over the whole
target sequence in one fused kernel and attends for all steps in one batched product.
"""

import logging
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
from fairseq.models import (
    FairseqEncoderDecoderModel,
    FairseqIncrementalDecoder,
    register_model,
    register_model_architecture,
)

from ..modules import HaloLSTMEncoder, LuongAttention, ResidualLSTMStack

logger = logging.getLogger(__name__)

DEFAULT_MAX_POSITIONS = int(1e5)


@dataclass
class HaloLSTMConfig(FairseqDataclass):
    encoder_embed_dim: int = field(default=512, metadata={"help": "encoder embedding size"})
    encoder_hidden_size: int = field(
        default=512, metadata={"help": "encoder LSTM hidden size per direction"})
    encoder_layers: int = field(default=2, metadata={"help": "number of encoder LSTM layers"})
    encoder_bidirectional: bool = field(
        default=False, metadata={"help": "make the encoder LSTM bidirectional"})
    encoder_dropout_in: Optional[float] = field(
        default=None, metadata={"help": "dropout on encoder embeddings; None means --dropout"})
    encoder_dropout_out: Optional[float] = field(
        default=None, metadata={"help": "dropout on encoder layer outputs; None: --dropout"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "decoder embedding size"})
    decoder_hidden_size: int = field(
        default=512, metadata={"help": "decoder LSTM hidden size; must equal "
                                       "--encoder-hidden-size, since the decoder starts from "
                                       "the encoder's final states"})
    decoder_out_embed_dim: int = field(
        default=512, metadata={"help": "size C of the attentional state that feeds the output "
                                       "layer (and that Halo perturbs)"})
    decoder_layers: int = field(
        default=2, metadata={"help": "number of decoder LSTM layers; must equal "
                                     "--encoder-layers"})
    decoder_dropout_in: Optional[float] = field(
        default=None, metadata={"help": "dropout on decoder embeddings; None means --dropout"})
    decoder_dropout_out: Optional[float] = field(
        default=None, metadata={"help": "dropout on decoder layer outputs and on [c; s] "
                                        "before the attentional layer; None means --dropout"})
    input_feeding: bool = field(
        default=False, metadata={"help": "feed the previous attentional state into the first "
                                         "decoder layer (Luong et al. 2015); slower, since "
                                         "training then steps through the target"})
    no_residuals: bool = field(
        default=False, metadata={"help": "turn off residual connections between stacked "
                                         "LSTM layers"})
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "tie the decoder embeddings to the output layer; "
                                         "needs --decoder-out-embed-dim == --decoder-embed-dim"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability, in [0, 1)"})
    max_source_positions: int = field(
        default=DEFAULT_MAX_POSITIONS, metadata={"help": "longest source sentence accepted"})
    max_target_positions: int = field(
        default=DEFAULT_MAX_POSITIONS, metadata={"help": "longest target sentence accepted"})


def check_config(cfg) -> None:
    """Raise ValueError, naming the flags, for sizes that cannot be wired together."""
    if cfg.encoder_layers < 1 or cfg.decoder_layers < 1:
        raise ValueError("--encoder-layers and --decoder-layers must be at least 1, got "
                         f"{cfg.encoder_layers} and {cfg.decoder_layers}")
    if cfg.encoder_layers != cfg.decoder_layers:
        raise ValueError(
            f"--encoder-layers ({cfg.encoder_layers}) must equal --decoder-layers "
            f"({cfg.decoder_layers}): each decoder layer starts from the final state of the "
            "encoder layer at the same depth"
        )
    if cfg.encoder_hidden_size != cfg.decoder_hidden_size:
        raise ValueError(
            f"--encoder-hidden-size ({cfg.encoder_hidden_size}) must equal "
            f"--decoder-hidden-size ({cfg.decoder_hidden_size}): the decoder starts from the "
            "encoder's final forward states"
        )
    if cfg.share_decoder_input_output_embed and cfg.decoder_out_embed_dim != cfg.decoder_embed_dim:
        raise ValueError(
            "--share-decoder-input-output-embed needs --decoder-out-embed-dim "
            f"({cfg.decoder_out_embed_dim}) equal to --decoder-embed-dim ({cfg.decoder_embed_dim})"
        )
    for name in ("dropout", "encoder_dropout_in", "encoder_dropout_out", "decoder_dropout_in",
                 "decoder_dropout_out"):
        value = getattr(cfg, name)
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {value}")


def _dropout(value, default):
    return default if value is None else value


class HaloLSTMDecoder(FairseqIncrementalDecoder):
    """LSTM decoder with Luong attention whose features are the tanh attentional states."""

    def __init__(self, dictionary, cfg, encoder_output_units: int):
        super().__init__(dictionary)
        self.input_feeding = cfg.input_feeding
        self.dropout_in = _dropout(cfg.decoder_dropout_in, cfg.dropout)
        self.dropout_out = _dropout(cfg.decoder_dropout_out, cfg.dropout)
        self.out_dim = cfg.decoder_out_embed_dim
        self.max_target_positions = cfg.max_target_positions
        padding_idx = dictionary.pad()

        self.embed_tokens = nn.Embedding(len(dictionary), cfg.decoder_embed_dim, padding_idx)
        nn.init.uniform_(self.embed_tokens.weight, -0.1, 0.1)
        nn.init.zeros_(self.embed_tokens.weight[padding_idx])
        input_size = cfg.decoder_embed_dim + (self.out_dim if self.input_feeding else 0)
        self.lstm = ResidualLSTMStack(
            input_size, cfg.decoder_hidden_size, cfg.decoder_layers,
            dropout=self.dropout_out, residual=not cfg.no_residuals,
        )
        self.attention = LuongAttention(cfg.decoder_hidden_size, encoder_output_units)
        self.attentional = nn.Linear(encoder_output_units + cfg.decoder_hidden_size,
                                     self.out_dim, bias=False)  # W_c
        if cfg.share_decoder_input_output_embed:
            self.output_projection = nn.Linear(self.out_dim, len(dictionary))
            self.output_projection.weight = self.embed_tokens.weight
        else:
            self.output_projection = nn.Linear(self.out_dim, len(dictionary))
            nn.init.uniform_(self.output_projection.weight, -0.1, 0.1)
        nn.init.zeros_(self.output_projection.bias)

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        """Score the next token at every target position.

        Returns:
            ``(logits, extra)``: ``(B, T, V)`` logits and ``{"attn": [(B, T, S)]}``.
        """
        h, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state)
        return self.output_layer(h), extra

    def output_layer(self, features, **kwargs):
        """Project ``(..., C)`` attentional states to ``(..., V)`` logits."""
        return self.output_projection(features)

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None,
                         **kwargs):
        """Compute the attentional states.

        Args:
            prev_output_tokens: ``(B, T)`` int64 decoder inputs (the target shifted right).
            encoder_out: the encoder's :class:`~fairseq_halo.modules.encoder.EncoderOut`.
            incremental_state: cache for step-by-step decoding; only the last token of
                ``prev_output_tokens`` is then read.

        Returns:
            ``(h, extra)``: ``(B, T, C)`` attentional states in (-1, 1) and
            ``{"attn": [(B, T, S)]}`` attention weights.
        """
        if incremental_state is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
        state = self._start_state(encoder_out, incremental_state)
        x = self.embed_tokens(prev_output_tokens)  # (B, T, E)
        x = F.dropout(x, p=self.dropout_in, training=self.training)

        if self.input_feeding or incremental_state is not None:
            s, attn, h, state = self._run_steps(x, encoder_out, state)
        else:
            s, attn, h = self._run_sequence(x, encoder_out, state)
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "state", state)
        return h, {"attn": [attn]}

    def _start_state(self, encoder_out, incremental_state) -> Dict[str, Optional[torch.Tensor]]:
        """Return the cached decoding state or, at the first step, the encoder's final one."""
        if incremental_state is not None:
            cached = self.get_incremental_state(incremental_state, "state")
            if cached is not None:
                return cached
        outputs = encoder_out.outputs.transpose(0, 1)  # (B, S, C_enc)
        B = outputs.size(0)
        # Incremental decoding attends from one step per call, and beam search reorders the
        # cached state at every step, so projecting each query there costs less than caching
        # the keys and reordering them.
        keys = self.attention.keys(outputs) if incremental_state is None else None
        return {
            "h": encoder_out.final_h, "c": encoder_out.final_c,  # (L, B, hidden)
            "feed": outputs.new_zeros(B, self.out_dim),  # (B, C)
            "keys": keys,  # (B, S, hidden), or None while decoding incrementally
        }

    def _attend(self, s, encoder_out, keys):
        """Turn ``(B, T, hidden)`` top states into attentional states and attention weights."""
        values = encoder_out.outputs.transpose(0, 1)  # (B, S, C_enc)
        mask = encoder_out.padding_mask.t()  # (B, S)
        context, attn = self.attention(s, keys, values, mask)  # (B, T, C_enc), (B, T, S)
        combined = F.dropout(torch.cat([context, s], dim=-1), p=self.dropout_out,
                             training=self.training)
        return torch.tanh(self.attentional(combined)), attn  # (B, T, C)

    def _run_sequence(self, x, encoder_out, state):
        """Run the whole target at once (no input feeding)."""
        layers = [(h.unsqueeze(0), c.unsqueeze(0)) for h, c in zip(state["h"], state["c"])]
        s, _ = self.lstm(x.transpose(0, 1), layers)  # (T, B, hidden)
        h, attn = self._attend(s.transpose(0, 1), encoder_out, state["keys"])
        return s, attn, h

    def _run_steps(self, x, encoder_out, state):
        """Step through the target, feeding each attentional state into the next step."""
        layers = list(zip(state["h"], state["c"]))
        feed = state["feed"]
        outputs, attns = [], []
        for t in range(x.size(1)):
            step_input = torch.cat([x[:, t], feed], dim=-1) if self.input_feeding else x[:, t]
            s, layers = self.lstm.step(step_input, layers)  # (B, hidden)
            h, attn = self._attend(s.unsqueeze(1), encoder_out, state["keys"])  # (B, 1, C)
            feed = h.squeeze(1)
            outputs.append(h)
            attns.append(attn)
        new_state = {
            "h": torch.stack([h for h, _ in layers]), "c": torch.stack([c for _, c in layers]),
            "feed": feed, "keys": state["keys"],
        }
        return None, torch.cat(attns, dim=1), torch.cat(outputs, dim=1), new_state

    def reorder_incremental_state(self, incremental_state, new_order):
        """Select beam entries ``new_order`` in the cached state."""
        state = self.get_incremental_state(incremental_state, "state")
        if state is None:
            return
        reordered = {
            "h": state["h"].index_select(1, new_order), "c": state["c"].index_select(1, new_order),
            "feed": state["feed"].index_select(0, new_order),
            "keys": None if state["keys"] is None else state["keys"].index_select(0, new_order),
        }
        self.set_incremental_state(incremental_state, "state", reordered)

    def max_positions(self):
        return self.max_target_positions


def build_encoder(cfg, task) -> HaloLSTMEncoder:
    """Build the source encoder from a ``HaloLSTMConfig`` (or a subclass) and the task."""
    return HaloLSTMEncoder(
        task.source_dictionary, cfg.encoder_embed_dim, cfg.encoder_hidden_size,
        cfg.encoder_layers, cfg.encoder_bidirectional,
        _dropout(cfg.encoder_dropout_in, cfg.dropout),
        _dropout(cfg.encoder_dropout_out, cfg.dropout),
        residual=not cfg.no_residuals,
        left_pad=getattr(getattr(task, "cfg", None), "left_pad_source", True),
        max_positions=cfg.max_source_positions,
    )


@register_model("halo_lstm", dataclass=HaloLSTMConfig)
class HaloLSTMModel(FairseqEncoderDecoderModel):
    """Attentional LSTM encoder-decoder whose output features suit Halo."""

    @classmethod
    def build_model(cls, cfg, task):
        check_config(cfg)
        encoder = build_encoder(cfg, task)
        decoder = HaloLSTMDecoder(task.target_dictionary, cfg, encoder.output_units)
        return cls(encoder, decoder)


@register_model_architecture("halo_lstm", "halo_lstm_paper")
def halo_lstm_paper(cfg):
    """Set the defaults of Mei et al. (2018): 2 layers of 512 units per direction, dropout 0.5."""
    cfg.encoder_bidirectional = getattr(cfg, "encoder_bidirectional", True)
    cfg.dropout = getattr(cfg, "dropout", 0.5)


@register_model_architecture("halo_lstm", "halo_lstm_small")
def halo_lstm_small(cfg):
    """Set the defaults of a small bidirectional model for tests and CPU runs."""
    for name in ("encoder_embed_dim", "encoder_hidden_size", "decoder_embed_dim",
                 "decoder_hidden_size", "decoder_out_embed_dim"):
        setattr(cfg, name, getattr(cfg, name, 128))
    cfg.encoder_bidirectional = getattr(cfg, "encoder_bidirectional", True)
    cfg.dropout = getattr(cfg, "dropout", 0.3)
