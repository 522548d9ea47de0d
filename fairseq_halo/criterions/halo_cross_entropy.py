"""The ``halo_cross_entropy`` criterion: token NLL plus the Halo term (Mei et al., *SEM 2018).

Notation, per target position (see :mod:`fairseq_halo.halo` for the functions):

- ``h``: ``(B, T, C)`` the decoder state that feeds the output layer, in (-1, 1)^C for
  ``halo_lstm`` (its tanh attentional state). A decoder whose features contain more than that
  state names the dims to perturb with ``halo_state_dims()``, as the selective decoder of
  ``halo_modelz`` and ``halo_modelp`` does for the state that feeds its tag selector;
- ``h_uniform``: ``(K, B, T, C)`` uniform draws in (-1, 1)^C;
- ``lambda_``: ``(K, B, T, 1)`` interpolation weights drawn from Beta(alpha, beta);
- ``h_noisy = h + lambda_ * (h_uniform - h)``: ``(K, B, T, C)`` the neighbours;
- ``q``: the probability mass of each token class under the output layer applied to h_noisy.

loss = NLL of the gold token (optionally label-smoothed) + halo_weight * -log q[class of gold],
summed over target positions; the Halo term is averaged over the K neighbours and skips
positions whose gold token has no class. The clean states and their K neighbours go through the
model's output layer in one call (unless ``--halo-chunk-size`` splits the neighbours). The term is a training regularizer: validation and
``checkpoint_best.pt`` use the clean loss only, so their numbers are comparable across settings.
"""

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, FairseqDecoder
from fairseq.models.transformer import TransformerModelBase
from omegaconf import II

from .. import halo, predpatt
from ..partition import PARTITION_CHOICES, build_partition, gold_classes

logger = logging.getLogger(__name__)

# Model-level get_normalized_probs methods that only pass the call on to the decoder.
DELEGATING_NORMALIZERS = (
    BaseFairseqModel.get_normalized_probs, TransformerModelBase.get_normalized_probs,
)


def token_nll_loss(lprobs, target, epsilon, ignore_index, reduce=True):
    """Return ``(loss, nll_loss)`` as fairseq's ``label_smoothed_nll_loss`` does.

    At ``epsilon`` 0 the loss is the NLL itself, so the smoothing term, a sum over the whole
    vocabulary with a gradient of the same size, is skipped. The result is the same except
    where a log-probability is -inf: fairseq's ``0 * -inf`` then gives NaN, this gives the NLL.

    Args:
        lprobs: ``(N, V)`` float32 log-probabilities.
        target: ``(N,)`` int64 gold ids; positions equal to ``ignore_index`` count 0.
    """
    if epsilon > 0:
        return label_smoothed_nll_loss(
            lprobs, target, epsilon, ignore_index=ignore_index, reduce=reduce
        )
    target = target.unsqueeze(-1)  # (N, 1)
    nll_loss = -lprobs.gather(dim=-1, index=target)  # (N, 1)
    nll_loss.masked_fill_(target.eq(ignore_index), 0.0)
    if reduce:
        nll_loss = nll_loss.sum()
    return nll_loss, nll_loss


def smoothed_nll_loss(gold, total, target, epsilon, ignore_index, V, reduce=True):
    """Return ``(loss, nll_loss)`` as :func:`token_nll_loss`, from per-row sums.

    Args:
        gold: ``(N,)`` float32 log-probability of each gold token.
        total: ``(N,)`` float32 sum of each row's log-probabilities (read when epsilon > 0).
        target: ``(N,)`` int64 gold ids; positions equal to ``ignore_index`` count 0.
        V: the vocabulary size.
    """
    pad = target.eq(ignore_index).unsqueeze(-1)  # (N, 1)
    nll_loss = (-gold).unsqueeze(-1).masked_fill(pad, 0.0)  # (N, 1)
    if reduce:
        nll_loss = nll_loss.sum()
    if epsilon == 0:
        return nll_loss, nll_loss
    # As fairseq's label_smoothed_nll_loss: weight epsilon / (V - 1) on every other token.
    smooth_loss = (-total).unsqueeze(-1).masked_fill(pad, 0.0)  # (N, 1)
    if reduce:
        smooth_loss = smooth_loss.sum()
    eps_i = epsilon / (V - 1)
    return (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss, nll_loss


def normalizes_with_log_softmax(model) -> bool:
    """Return whether ``model.get_normalized_probs`` is fairseq's log-softmax of the logits.

    True for decoders that inherit fairseq's normalization without an adaptive softmax, in models
    that inherit it too or delegate to it as fairseq's transformer does. Others may normalize
    differently, so their noisy states go through ``get_normalized_probs``.
    """
    decoder = getattr(model, "decoder", None)
    if decoder is None or getattr(decoder, "adaptive_softmax", None) is not None:
        return False
    return (
        type(model).get_normalized_probs in DELEGATING_NORMALIZERS
        and type(model).get_normalized_probs_scriptable
        is BaseFairseqModel.get_normalized_probs_scriptable
        and type(decoder).get_normalized_probs is FairseqDecoder.get_normalized_probs
        and type(decoder).get_normalized_probs_scriptable
        is FairseqDecoder.get_normalized_probs_scriptable
    )


@dataclass
class HaloCrossEntropyConfig(FairseqDataclass):
    halo_weight: float = field(
        default=1.0,
        metadata={"help": "weight of the Halo term in the loss; 0 turns Halo off (plain "
                          "cross entropy, or label-smoothed with --label-smoothing)"},
    )
    halo_alpha: float = field(
        default=1.0, metadata={"help": "alpha of Beta(alpha, beta) for lambda_, > 0"},
    )
    halo_beta: float = field(
        default=19.0, metadata={"help": "beta of Beta(alpha, beta) for lambda_, > 0; the "
                                        "mean interpolation weight is alpha / (alpha + beta)"},
    )
    halo_samples: int = field(
        default=1, metadata={"help": "K, the number of noisy neighbours per position whose "
                                     "Halo terms are averaged; all K share one projection"},
    )
    halo_noise: ChoiceEnum(list(halo.NOISE_CHOICES)) = field(
        default="uniform",
        metadata={"help": "uniform: interpolate towards a uniform draw in (-1,1)^C with a "
                          "Beta weight; atanh-gaussian: Gaussian noise of --halo-sigma in atanh "
                          "space; gaussian: additive Gaussian noise of --halo-sigma, for "
                          "models whose features are not bounded (e.g. transformer)"},
    )
    halo_sigma: float = field(
        default=1.0, metadata={"help": "standard deviation of the Gaussian noise of "
                                       "--halo-noise atanh-gaussian and gaussian, > 0"},
    )
    halo_partition: ChoiceEnum(list(PARTITION_CHOICES)) = field(
        default="tag",
        metadata={"help": "token classes: tag (predicate vs. argument by PredPatt suffix), "
                          "tsv (from --halo-class-file) or singleton (each token its own class)"},
    )
    halo_class_file: Optional[str] = field(
        default=None, metadata={"help": "token<TAB>class file for --halo-partition tsv"},
    )
    halo_unk_class: ChoiceEnum([predpatt.PREDICATE, predpatt.ARGUMENT]) = field(
        default=predpatt.ARGUMENT,
        metadata={"help": "class of the plain <unk> token in the tag partition"},
    )
    halo_chunk_size: int = field(
        default=0,
        metadata={"help": "if > 0, compute the Halo term over chunks of this many target "
                          "positions, recomputed in the backward pass, to bound its memory; "
                          "0 projects clean and noisy states in one call"},
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "epsilon for label smoothing of the NLL term, 0 for none"},
    )
    sentence_avg: bool = II("optimization.sentence_avg")


@register_criterion("halo_cross_entropy", dataclass=HaloCrossEntropyConfig)
class HaloCrossEntropyCriterion(FairseqCriterion):
    def __init__(self, task, halo_weight, halo_alpha, halo_beta, halo_samples, halo_noise,
                 halo_sigma, halo_partition, halo_class_file, halo_unk_class, halo_chunk_size,
                 label_smoothing, sentence_avg):
        super().__init__(task)

        # Validate every option before any compute.
        halo.check_noise_options(str(halo_noise), halo_alpha, halo_beta, halo_sigma, halo_samples)
        if halo_weight < 0:
            raise ValueError(f"--halo-weight must be >= 0, got {halo_weight}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {label_smoothing}")
        if halo_chunk_size < 0:
            raise ValueError(f"--halo-chunk-size must be >= 0, got {halo_chunk_size}")
        self.weight = halo_weight
        self.alpha, self.beta, self.sigma = halo_alpha, halo_beta, halo_sigma
        self.samples, self.noise = halo_samples, str(halo_noise)
        self.chunk_size = halo_chunk_size
        self.eps = label_smoothing
        self.sentence_avg = sentence_avg

        # The partition of the target dictionary, built and logged once.
        self.partition = build_partition(
            task.target_dictionary, str(halo_partition), halo_class_file, str(halo_unk_class)
        )
        self._members = {}
        self._partitions = {}
        self._checked_bounds = self.noise not in halo.BOUNDED_NOISES
        self._logged_state_dims = False
        if self.weight > 0:
            logger.info(
                f"Halo: weight {self.weight}, noise {self.noise}, K={self.samples}, "
                + (f"lambda_ ~ Beta({self.alpha}, {self.beta})" if self.noise == "uniform"
                   else f"sigma {self.sigma}")
            )

    def members(self, device):
        """Return the class members on ``device`` (None for the singleton partition)."""
        if self.partition.is_singleton:
            return None
        if device not in self._members:
            self._members[device] = [m.to(device) for m in self.partition.class_members()]
        return self._members[device]

    def partition_on(self, device):
        """Return the partition with its token classes on ``device``, copied there once.

        A copy from the host at every batch would wait for the device to finish its queue.
        """
        if device not in self._partitions:
            self._partitions[device] = dataclasses.replace(
                self.partition, token_class=self.partition.token_class.to(device)
            )
        return self._partitions[device]

    def forward(self, model, sample, reduce=True):
        """Compute the loss of a batch.

        Returns:
            ``(loss, sample_size, logging_output)``: the summed loss (float32 scalar), the
            normalizer fairseq divides the gradient by, and the numbers to log.
        """
        target = model.get_targets(sample, None)  # (B, T)
        h, extra = model.extract_features(**sample["net_input"])  # (B, T, C)
        use_halo = self.weight > 0 and model.training
        dims = self.state_dims(model, h.size(-1)) if use_halo else None
        if use_halo and not self._checked_bounds:
            self.check_bounded(h[..., dims])

        logging_output = {}
        if not use_halo:
            loss, nll_loss = self.clean_losses(model, h, extra, target, reduce)
        else:
            h_noisy = halo.perturb_dims(
                h, dims, self.noise, self.samples, self.alpha, self.beta, self.sigma
            )  # (K, B, T, C)
            # The Halo term covers the positions whose gold token has a class.
            gold_class = gold_classes(self.partition_on(target.device), target)  # (B, T)
            mask = target.ne(self.padding_idx) & gold_class.ge(0)
            if self.chunk_size == 0:
                loss, nll_loss, per_position = self.joint_losses(
                    model, h, h_noisy, extra, target, gold_class, mask, reduce
                )
            else:
                loss, nll_loss = self.clean_losses(model, h, extra, target, reduce)
                per_position = self.chunked_halo(model, h_noisy, extra, target, gold_class, mask)
            halo_sum = per_position.sum()
            if reduce:
                loss = loss + self.weight * halo_sum
            else:
                loss = loss + self.weight * per_position.view(loss.shape)  # (B*T, 1)
            logging_output["halo_loss"] = halo_sum.data
            logging_output["halo_tokens"] = mask.sum().data

        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output.update({
            "loss": loss.data, "nll_loss": nll_loss.data, "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0), "sample_size": sample_size,
        })
        return loss, sample_size, logging_output

    def clean_losses(self, model, h, extra, target, reduce):
        """Return ``(loss, nll_loss)`` of the clean states alone, as fairseq's criteria do."""
        lprobs = self.log_probs(model, h, extra)  # (B, T, V)
        return token_nll_loss(
            lprobs.view(-1, lprobs.size(-1)), target.view(-1), self.eps,
            ignore_index=self.padding_idx, reduce=reduce,
        )

    def joint_losses(self, model, h, h_noisy, extra, target, gold_class, mask, reduce):
        """Project the clean states and all K neighbours in one output-layer call.

        Returns:
            ``(loss, nll_loss, per_position)``: the token losses as :meth:`clean_losses`
            returns them and the ``(B, T)`` Halo term of each position.
        """
        K, B, T, C = h_noisy.shape
        states = torch.cat([h.unsqueeze(0), h_noisy]).view((1 + K) * B, T, C)
        members = self.members(target.device)
        if not normalizes_with_log_softmax(model):
            # The model normalizes in its own way, so the rows go through its
            # get_normalized_probs and are split afterwards.
            lprobs = self.log_probs(model, states, extra)  # ((1 + K) * B, T, V)
            clean, noisy = lprobs.split([B, K * B])
            loss, nll_loss = token_nll_loss(
                clean.reshape(-1, clean.size(-1)), target.view(-1), self.eps,
                ignore_index=self.padding_idx, reduce=reduce,
            )
            per_position = halo.halo_positions(
                noisy.view(K, B, T, -1), gold_class, mask, members, target
            )  # (B, T)
            return loss, nll_loss, per_position

        # A plain log-softmax model: score both kinds of rows straight from the logits, with
        # one gradient buffer for all of them.
        logits = model.output_layer(states).float()  # ((1 + K) * B, T, V)
        V = logits.size(-1)
        flat_target = target.reshape(-1)  # (B*T,)
        noisy_index = flat_target if members is None else gold_class.clamp(min=0).reshape(-1)
        # The logits are read by nothing else, so their buffer takes the gradient.
        gold, total, log_q = halo.joint_log_probs(
            logits.view(-1, V), B * T, flat_target, noisy_index.repeat(K), members,
            with_total=self.eps > 0, consume=True,
        )  # (B*T,), (B*T,), (K*B*T,)
        loss, nll_loss = smoothed_nll_loss(
            gold, total, flat_target, self.eps, self.padding_idx, V, reduce
        )
        return loss, nll_loss, halo.masked_term(log_q.view(K, B, T), mask)

    def chunked_halo(self, model, h_noisy, extra, target, gold_class, mask):
        """Return the ``(B, T)`` Halo term, projected in chunks of positions."""
        # Where the model normalizes with a plain log-softmax, the Halo term normalizes the
        # noisy logits itself, which costs less than a log-softmax over the vocabulary.
        from_logits = normalizes_with_log_softmax(model)
        project = ((lambda x: model.output_layer(x).float()) if from_logits
                   else (lambda x: self.log_probs(model, x, extra)))
        return halo.chunked_halo_positions(
            h_noisy, gold_class, mask, project, self.members(target.device), target,
            self.chunk_size, from_logits,
        )  # (B, T)

    @staticmethod
    def log_probs(model, states, extra):
        """Project states through the model's output layer into float32 log-probabilities."""
        logits = model.output_layer(states)
        return model.get_normalized_probs((logits, extra), log_probs=True).float()

    def state_dims(self, model, C):
        """Return the slice of the C feature dims that Halo perturbs, logged once.

        A decoder may define ``halo_state_dims()`` returning ``(slice, description)``; without
        it, all C features are perturbed.
        """
        hook = getattr(getattr(model, "decoder", None), "halo_state_dims", None)
        if hook is None:
            dims, description = slice(0, C), "all decoder output features"
        else:
            dims, description = hook()
        if not self._logged_state_dims:
            start, stop, _ = dims.indices(C)
            logger.info(f"Halo perturbs features {start}:{stop} of {C}: {description}")
            self._logged_state_dims = True
        return dims

    def check_bounded(self, h):
        """Stop with a clear message when a bounded recipe meets unbounded features (once)."""
        largest = h.detach().abs().max().item()
        if largest > 1.0:
            raise ValueError(
                f"--halo-noise {self.noise} needs decoder features in [-1, 1], but this model's "
                f"features reach {largest:.3g}; use --halo-noise gaussian for models whose "
                "features are not bounded (such as transformer)"
            )
        self._checked_bounds = True

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        """Aggregate logging outputs; losses are reported in bits, as fairseq does."""
        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        loss_sum, nll_sum = total("loss"), total("nll_loss")
        ntokens, sample_size = total("ntokens"), total("sample_size")
        metrics.log_scalar("loss", loss_sum / max(sample_size, 1) / math.log(2), sample_size,
                           round=3)
        metrics.log_scalar("nll_loss", nll_sum / max(ntokens, 1) / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        if any("halo_loss" in log for log in logging_outputs):
            halo_tokens = total("halo_tokens")
            metrics.log_scalar(
                "halo_loss", total("halo_loss") / max(halo_tokens, 1) / math.log(2),
                halo_tokens, round=3,
            )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
