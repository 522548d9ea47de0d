"""The ``halo_selective`` model and its architectures ``halo_modelz`` and ``halo_modelp``.

Selective decoding (Zhang, Duh and Van Durme, 2017): a bidirectional LSTM encoder and a decoder
with one LSTM stack per tag (predicate, argument) and a tag selector, scored as one distribution
over the tagged target vocabulary (see :mod:`fairseq_halo.modules.selective_decoder`).
``halo_modelz`` is ModelZ: no residual connections, attention from the previous decoder state
into the stacks' input. ``halo_modelp`` is ModelP: ModelZ with residual connections between
stacked layers and Luong attention with the tanh attentional state. Both share the encoder,
attention and LSTM stack of ``halo_lstm`` and the tag partition of ``halo_cross_entropy``.
"""

import logging
from dataclasses import dataclass, field

from fairseq.models import (
    FairseqEncoderDecoderModel,
    register_model,
    register_model_architecture,
)

from .. import partition
from ..modules.selective_decoder import SelectiveLSTMDecoder
from .halo_lstm import (
    HaloLSTMConfig, _dropout, build_encoder, check_config, halo_lstm_paper, halo_lstm_small,
)

logger = logging.getLogger(__name__)


@dataclass
class HaloSelectiveConfig(HaloLSTMConfig):
    luong_attention: bool = field(
        default=False,
        metadata={"help": "ModelP wiring: attend from each stack's new output and read the "
                          "selector and the output layer from the tanh attentional state "
                          "(its size is --decoder-out-embed-dim); off, ModelZ wiring: attend "
                          "from the previous state, feed the context into both stacks and "
                          "read their top hidden states"},
    )


def check_selective_config(cfg) -> None:
    """Raise ValueError, naming the flags, for settings the selective decoder cannot wire."""
    if not cfg.luong_attention and cfg.input_feeding:
        raise ValueError(
            "--input-feeding needs --luong-attention: the ModelZ wiring already feeds the "
            "context c_i into both stacks; drop --input-feeding or use --arch halo_modelp"
        )
    if not cfg.luong_attention and cfg.share_decoder_input_output_embed:
        raise ValueError(
            "--share-decoder-input-output-embed needs --luong-attention: the ModelZ wiring "
            "projects LSTM hidden states, not embedding-sized attentional states; drop the "
            "flag or use --arch halo_modelp"
        )
    check_config(cfg)


def build_tag_partition(dictionary) -> partition.Partition:
    """Build, check and log the predicate/argument partition of the target dictionary.

    Raises:
        ValueError: a tag has no token in the dictionary apart from ``</s>`` and ``<unk>``,
            which are tagged by rule, so the targets are not linearized PredPatt.
    """
    tags = partition.tag_partition(dictionary)
    words = tags.token_class.clone()
    words[[dictionary.eos(), dictionary.unk()]] = partition.NO_CLASS
    missing = [name for tag, name in enumerate(tags.class_names) if not words.eq(tag).any()]
    if missing:
        raise ValueError(
            f"selective decoding (--arch halo_modelz, halo_modelp) found no {' or '.join(missing)} "
            "tokens in the target dictionary; it needs linearized PredPatt targets (tokens "
            "ending in :p or :a). Use --arch halo_lstm for other targets"
        )
    unclassed = partition.unclassed_symbols(dictionary, tags)
    logger.info(
        f"selective decoder: {tags.summary()}; tokens without a tag get probability 0"
        + (f", among them {len(unclassed)} non-special symbol(s) such as {unclassed[0]!r}"
           if unclassed else "")
    )
    return tags


@register_model("halo_selective", dataclass=HaloSelectiveConfig)
class HaloSelectiveModel(FairseqEncoderDecoderModel):
    """Encoder-decoder with selective decoding over predicate and argument tags."""

    @classmethod
    def build_model(cls, cfg, task):
        check_selective_config(cfg)
        tags = build_tag_partition(task.target_dictionary)
        encoder = build_encoder(cfg, task)
        decoder = SelectiveLSTMDecoder(
            task.target_dictionary, cfg, encoder.output_units, tags.token_class,
            tags.num_classes, _dropout(cfg.decoder_dropout_in, cfg.dropout),
            _dropout(cfg.decoder_dropout_out, cfg.dropout),
        )
        return cls(encoder, decoder)


@register_model_architecture("halo_selective", "halo_modelz")
def halo_modelz(cfg):
    """ModelZ: no residual connections and ModelZ's attention wiring; sizes of halo_lstm_paper."""
    cfg.no_residuals = getattr(cfg, "no_residuals", True)
    cfg.luong_attention = getattr(cfg, "luong_attention", False)
    halo_lstm_paper(cfg)


@register_model_architecture("halo_selective", "halo_modelp")
def halo_modelp(cfg):
    """ModelP: ModelZ plus residual connections and Luong attention with input feeding."""
    cfg.no_residuals = getattr(cfg, "no_residuals", False)
    cfg.luong_attention = getattr(cfg, "luong_attention", True)
    cfg.input_feeding = getattr(cfg, "input_feeding", True)
    halo_lstm_paper(cfg)


@register_model_architecture("halo_selective", "halo_modelz_small")
def halo_modelz_small(cfg):
    """ModelZ with the sizes of halo_lstm_small, for tests and CPU runs."""
    halo_lstm_small(cfg)
    halo_modelz(cfg)


@register_model_architecture("halo_selective", "halo_modelp_small")
def halo_modelp_small(cfg):
    """ModelP with the sizes of halo_lstm_small, for tests and CPU runs."""
    halo_lstm_small(cfg)
    halo_modelp(cfg)
