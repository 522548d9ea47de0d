"""The selective decoder of ModelZ and ModelP (Zhang, Duh and Van Durme, 2017: selective decoding).

At target step i a selector scores the tag t_i (predicate or argument) from the state that step
i-1 left, and two untied LSTM stacks, one per tag, each compute a candidate state from it. The
tag of the token emitted at step i picks the candidate that step i+1 continues from. The decoder
scores the tagged target vocabulary jointly:

    log P(y_i = w) = log P(t_i = t(w)) + log softmax over the tokens of class t(w) of W_o o_i^t(w)

where o_i^t is the output state of the stack of tag t. The cross entropy of this distribution is
ModelZ's loss -log P(y_i | t_i) - log P(t_i), beam search explores both tags, and tokens in no
class (padding, beginning of sentence, ``madeupwordNNNN``) get probability 0, written as the
finite log-probability :data:`NO_TAG_LOG_PROB`.

Two wirings share the stacks, the selector and the output layer:

- ModelZ (``luong_attention`` off): c_i = attend(s_{i-1}) with score s^T W_a h_j. Each stack
  steps from s_{i-1} on [E y_{i-1}; c_i], and o_i^t is its top LSTM hidden state. The selector
  reads [s_{i-1}; c_{i-1}].
- ModelP (``luong_attention`` on): each stack steps on E y_{i-1} (and h~_{i-1} with input
  feeding). Its output x_i^t attends, c_i^t = attend(x_i^t), and o_i^t = h~_i^t =
  tanh(W_c [c_i^t; x_i^t]). The selector reads h~_{i-1} = tanh(W_c [c_{i-1}; s_{i-1}]).

The features at position i are ``[z_{i-1} | o_i^0 | o_i^1]``: the selector input followed by the
candidates of the two tags, so the output layer acts on each position alone. Halo perturbs only
the bounded decoder state inside z_{i-1} (see :meth:`SelectiveLSTMDecoder.halo_state_dims`),
because P(t_i), the class mass Halo scores, depends on nothing else.
"""

from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import FairseqIncrementalDecoder

from .attention import LuongAttention
from .lstm_stack import ResidualLSTMStack

# Log-probability of tokens in no class. Its exp() is exactly 0 in float32 and float64, since it
# lies below the log of the smallest float64 (about -745). It is finite because fairseq's
# label_smoothed_nll_loss, which halo_cross_entropy calls, multiplies the summed log-probabilities
# by epsilon, and 0 * -inf would give NaN even at epsilon 0.
NO_TAG_LOG_PROB = -1000.0

# The batch dimension of each tensor of the cached decoding state.
STATE_BATCH_DIM = {"h": 2, "c": 2, "context": 0, "attentional": 1, "keys": 0}


def tagged_log_probs(tag_logits: torch.Tensor, token_logits: torch.Tensor,
                     token_class: torch.Tensor) -> torch.Tensor:
    """Combine tag scores and per-tag token scores into log-probabilities of tagged tokens.

    Args:
        tag_logits: ``(..., n)`` selector scores of the ``n`` tags.
        token_logits: ``(..., n, V)`` token scores computed from the state of each tag's stack.
        token_class: ``(V,)`` int64 tag of each token, -1 for tokens in no class.

    Returns:
        ``(..., V)`` float32 ``log P(t(w)) + log P(w | t(w))``; each row sums to 1 in
        probability, and tokens in no class hold :data:`NO_TAG_LOG_PROB`.
    """
    log_tag = F.log_softmax(tag_logits.float(), dim=-1)  # (..., n)
    lprobs = token_logits.new_full(token_logits.shape[:-2] + token_logits.shape[-1:],
                                   NO_TAG_LOG_PROB, dtype=torch.float32)  # (..., V)
    for tag in range(tag_logits.size(-1)):
        in_class = token_class == tag  # (V,)
        logits = token_logits[..., tag, :].float().masked_fill(~in_class, float("-inf"))
        log_token = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # (..., V)
        lprobs = torch.where(in_class, log_tag[..., tag:tag + 1] + log_token, lprobs)
    return lprobs


def select_candidate(candidates: torch.Tensor, tag: torch.Tensor, dim: int) -> torch.Tensor:
    """Pick, for every batch entry, the candidate of its tag.

    Args:
        candidates: ``(n, ...)`` one state per tag, with the batch at dimension ``dim``.
        tag: ``(B,)`` int64 tag index per batch entry, in [0, n).
        dim: the batch dimension of ``candidates``.

    Returns:
        ``candidates`` without its first dimension.
    """
    shape = [1] * candidates.dim()
    shape[dim] = tag.numel()
    index = tag.view(shape).expand((1,) + candidates.shape[1:])
    return candidates.gather(0, index).squeeze(0)  # (...), the tag's candidate


class SelectiveLSTMDecoder(FairseqIncrementalDecoder):
    """Two tag-specific LSTM stacks, a tag selector and one shared output layer.

    Args:
        dictionary: the target dictionary.
        cfg: the model configuration (``HaloSelectiveConfig``).
        encoder_output_units: C_enc, the size of an encoder output.
        token_class: ``(V,)`` int64 tag of each dictionary index (0 predicate, 1 argument,
            -1 none), as :func:`fairseq_halo.partition.tag_partition` builds it.
        num_tags: n, the number of tags; each must have at least one token.
        dropout_in: dropout on the decoder embeddings.
        dropout_out: dropout on each LSTM layer's output, on [c; x] before W_c (ModelP) and on
            the features where the output layer reads them (ModelZ).
    """

    def __init__(self, dictionary, cfg, encoder_output_units: int, token_class: torch.Tensor,
                 num_tags: int, dropout_in: float, dropout_out: float):
        super().__init__(dictionary)
        self.luong = cfg.luong_attention
        self.input_feeding = cfg.input_feeding
        self.dropout_in = dropout_in
        self.dropout_out = dropout_out
        self.num_tags = num_tags
        self.hidden_size = cfg.decoder_hidden_size
        self.max_target_positions = cfg.max_target_positions
        self.register_buffer("token_class", token_class.clone(), persistent=False)

        # Sizes: o_i^t is the top hidden state (ModelZ) or the attentional state h~ (ModelP).
        if self.luong:
            self.out_dim = cfg.decoder_out_embed_dim
            self.selector_dim = self.out_dim  # h~_{i-1}
            input_size = cfg.decoder_embed_dim + (self.out_dim if self.input_feeding else 0)
        else:
            self.out_dim = cfg.decoder_hidden_size
            self.selector_dim = cfg.decoder_hidden_size + encoder_output_units  # [s; c]
            input_size = cfg.decoder_embed_dim + encoder_output_units

        padding_idx = dictionary.pad()
        self.embed_tokens = nn.Embedding(len(dictionary), cfg.decoder_embed_dim, padding_idx)
        nn.init.uniform_(self.embed_tokens.weight, -0.1, 0.1)
        nn.init.zeros_(self.embed_tokens.weight[padding_idx])
        self.stacks = nn.ModuleList(
            ResidualLSTMStack(input_size, cfg.decoder_hidden_size, cfg.decoder_layers,
                              dropout=self.dropout_out, residual=not cfg.no_residuals)
            for _ in range(self.num_tags)
        )
        self.attention = LuongAttention(cfg.decoder_hidden_size, encoder_output_units)
        if self.luong:
            self.attentional = nn.Linear(encoder_output_units + cfg.decoder_hidden_size,
                                         self.out_dim, bias=False)  # W_c
        self.selector = nn.Linear(self.selector_dim, self.num_tags)  # [U; C], b
        self.output_projection = nn.Linear(self.out_dim, len(dictionary))  # W_o
        if cfg.share_decoder_input_output_embed:
            self.output_projection.weight = self.embed_tokens.weight
        else:
            nn.init.uniform_(self.output_projection.weight, -0.1, 0.1)
        nn.init.zeros_(self.output_projection.bias)

    def halo_state_dims(self) -> Tuple[slice, str]:
        """Return the feature dims that Halo perturbs and a description of them for the log.

        The class mass at position i is P(t_i), a function of the selector input z_{i-1} only,
        so perturbing the candidate states of step i would leave it unchanged. Halo therefore
        perturbs the decoder state in z_{i-1}, which lies in (-1, 1) as an LSTM hidden state
        (ModelZ) or a tanh state (ModelP). ModelZ's context c_{i-1} stays clean, because dropout
        on the encoder outputs can take it beyond [-1, 1].
        """
        if self.luong:
            return slice(0, self.out_dim), (
                "h~_{i-1}, the attentional state chosen at step i-1, which feeds the tag "
                "selector P(t_i). The candidate states of step i stay clean")
        return slice(0, self.hidden_size), (
            "s_{i-1}, the top LSTM hidden state chosen at step i-1, which feeds the tag "
            "selector P(t_i). The context c_{i-1} and the candidate states of step i stay clean")

    def forward(self, prev_output_tokens, encoder_out=None, incremental_state=None, **kwargs):
        """Score the next token at every target position.

        Returns:
            ``(lprobs, extra)``: ``(B, T, V)`` float32 log-probabilities of the tagged tokens
            (fairseq treats them as logits, and its log-softmax leaves them unchanged) and
            ``{"attn": [(B, T, S)]}``.
        """
        features, extra = self.extract_features(prev_output_tokens, encoder_out,
                                                incremental_state)
        return self.output_layer(features), extra

    def output_layer(self, features, **kwargs):
        """Turn ``(..., C)`` features into ``(..., V)`` float32 joint log-probabilities.

        Each position is scored alone, so callers may chunk or perturb positions freely.
        """
        z = features[..., :self.selector_dim]  # (..., Z)
        candidates = features[..., self.selector_dim:].unflatten(
            -1, (self.num_tags, self.out_dim))  # (..., n, O)
        if not self.luong:
            # ModelZ's features are LSTM states, dropped out where they are read. ModelP's are
            # tanh attentional states, which take no dropout after the tanh.
            z = F.dropout(z, p=self.dropout_out, training=self.training)
            candidates = F.dropout(candidates, p=self.dropout_out, training=self.training)
        return tagged_log_probs(self.selector(z), self.output_projection(candidates),
                                self.token_class)

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None,
                         **kwargs):
        """Step both stacks through the target.

        Args:
            prev_output_tokens: ``(B, T)`` int64 decoder inputs (the target shifted right); the
                tag of each input token picks the candidate state that its step continues from.
            encoder_out: the encoder's :class:`~fairseq_halo.modules.encoder.EncoderOut`.
            incremental_state: cache for step-by-step decoding; only the last token of
                ``prev_output_tokens`` is then read.

        Returns:
            ``(features, extra)``: ``(B, T, Z + n * O)`` features ``[z_{i-1} | o_i^0 | o_i^1]``
            and ``{"attn": [(B, T, S)]}`` attention weights.
        """
        if incremental_state is not None:
            prev_output_tokens = prev_output_tokens[:, -1:]
        state = self._start_state(encoder_out, incremental_state)
        x = self.embed_tokens(prev_output_tokens)  # (B, T, E)
        x = F.dropout(x, p=self.dropout_in, training=self.training)
        # Inputs without a tag (<s> at the first step, where both candidates are equal, padding,
        # whose outputs are ignored, and untagged gold words) continue from tag 0's candidate.
        tags = self.token_class[prev_output_tokens].clamp(min=0)  # (B, T)

        step = self._step_luong if self.luong else self._step_modelz
        features, attns = [], []
        for t in range(x.size(1)):
            feature, attn, state = step(x[:, t], tags[:, t], encoder_out, state)
            features.append(feature)
            attns.append(attn)
        if incremental_state is not None:
            self.set_incremental_state(incremental_state, "state", state)
        return torch.stack(features, dim=1), {"attn": [torch.stack(attns, dim=1)]}

    def _start_state(self, encoder_out, incremental_state) -> Dict[str, torch.Tensor]:
        """Return the cached state or, at the first step, the encoder's final forward states.

        Both candidates start equal, so the first input token's tag does not matter.
        """
        if incremental_state is not None:
            cached = self.get_incremental_state(incremental_state, "state")
            if cached is not None:
                return cached
        outputs = encoder_out.outputs.transpose(0, 1)  # (B, S, C_enc)
        B = outputs.size(0)
        n = self.num_tags
        state = {
            "h": encoder_out.final_h.unsqueeze(0).expand(n, -1, -1, -1),  # (n, L, B, H)
            "c": encoder_out.final_c.unsqueeze(0).expand(n, -1, -1, -1),  # (n, L, B, H)
            "keys": self.attention.keys(outputs),  # (B, S, H)
        }
        if self.luong:
            state["attentional"] = outputs.new_zeros(n, B, self.out_dim)  # (n, B, O)
        else:
            state["context"] = outputs.new_zeros(B, outputs.size(-1))  # (B, C_enc)
        return state

    def _selected_layers(self, state, tag) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Return the per-layer ``(h, c)``, each ``(B, H)``, of the candidate of each tag."""
        h = select_candidate(state["h"], tag, dim=2)  # (L, B, H)
        c = select_candidate(state["c"], tag, dim=2)  # (L, B, H)
        return list(zip(h, c))

    def _run_stacks(self, step_input, layers):
        """Advance every tag's stack by one step from the same state.

        Returns:
            ``(outputs, h, c)``: ``(n, B, H)`` top outputs (after dropout and residuals) and
            the ``(n, L, B, H)`` new hidden and cell states.
        """
        outputs, hs, cs = [], [], []
        for stack in self.stacks:
            y, new_layers = stack.step(step_input, layers)  # (B, H)
            outputs.append(y)
            hs.append(torch.stack([h for h, _ in new_layers]))  # (L, B, H)
            cs.append(torch.stack([c for _, c in new_layers]))  # (L, B, H)
        return torch.stack(outputs), torch.stack(hs), torch.stack(cs)

    def _step_modelz(self, x, tag, encoder_out, state):
        """Run one ModelZ step: attend with s_{i-1}, then feed c_i into both stacks."""
        layers = self._selected_layers(state, tag)
        s_prev = layers[-1][0]  # (B, H), the top hidden state s_{i-1}
        z = torch.cat([s_prev, state["context"]], dim=-1)  # (B, H + C_enc)

        values = encoder_out.outputs.transpose(0, 1)  # (B, S, C_enc)
        mask = encoder_out.padding_mask.t()  # (B, S)
        context, attn = self.attention(s_prev.unsqueeze(1), state["keys"], values, mask)
        context, attn = context.squeeze(1), attn.squeeze(1)  # (B, C_enc), (B, S)

        _, h, c = self._run_stacks(torch.cat([x, context], dim=-1), layers)
        candidates = h[:, -1]  # (n, B, H), each stack's top hidden state
        feature = torch.cat([z, candidates.transpose(0, 1).flatten(1)], dim=-1)  # (B, Z + n*H)
        new_state = {"h": h, "c": c, "context": context, "keys": state["keys"]}
        return feature, attn, new_state

    def _step_luong(self, x, tag, encoder_out, state):
        """Run one ModelP step: advance both stacks, attend from each output, form h~ per tag."""
        layers = self._selected_layers(state, tag)
        z = select_candidate(state["attentional"], tag, dim=1)  # (B, O), h~_{i-1}
        step_input = torch.cat([x, z], dim=-1) if self.input_feeding else x

        outputs, h, c = self._run_stacks(step_input, layers)  # (n, B, H)
        queries = outputs.transpose(0, 1)  # (B, n, H)
        values = encoder_out.outputs.transpose(0, 1)  # (B, S, C_enc)
        mask = encoder_out.padding_mask.t()  # (B, S)
        context, attn = self.attention(queries, state["keys"], values, mask)  # (B, n, C_enc)
        combined = F.dropout(torch.cat([context, queries], dim=-1), p=self.dropout_out,
                             training=self.training)
        attentional = torch.tanh(self.attentional(combined))  # (B, n, O)

        feature = torch.cat([z, attentional.flatten(1)], dim=-1)  # (B, O + n*O)
        new_state = {"h": h, "c": c, "attentional": attentional.transpose(0, 1),
                     "keys": state["keys"]}  # attentional: (n, B, O)
        # NOTE: the tag of step i is unknown until a token is chosen, so the weights reported
        # for alignment are the mean over both tags' attention.
        return feature, attn.mean(dim=1), new_state  # attn: (B, S)

    def reorder_incremental_state(self, incremental_state, new_order):
        """Select beam entries ``new_order`` in the cached state, both candidates included."""
        state = self.get_incremental_state(incremental_state, "state")
        if state is None:
            return
        reordered = {
            key: value.index_select(STATE_BATCH_DIM[key], new_order)
            for key, value in state.items()
        }
        self.set_incremental_state(incremental_state, "state", reordered)

    def max_positions(self):
        return self.max_target_positions
