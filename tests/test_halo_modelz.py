"""Selective decoding (``halo_modelz``, ``halo_modelp``): the joint distribution over tagged
tokens, its loss, incremental decoding, the Halo term on the selector state, the configuration
checks and one train-and-generate run through the fairseq command-line tools.
"""

import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import PACKAGE_DIR, run_tool, toy_target_symbols, write_toy_corpus
from fairseq import options

from fairseq_halo import halo, predpatt
from fairseq_halo.criterions.halo_cross_entropy import (
    HaloCrossEntropyConfig,
    HaloCrossEntropyCriterion,
)
from fairseq_halo.models.halo_modelz import (
    HaloSelectiveConfig,
    HaloSelectiveModel,
    build_tag_partition,
    check_selective_config,
)
from fairseq_halo.modules.selective_decoder import NO_TAG_LOG_PROB, tagged_log_probs

WIRINGS = ["modelz", "modelp"]
SOURCES = ["w1 w3 w5 w2", "w6 w2", "w9 w4 w12"]


def selective_config(wiring, **overrides):
    """Tiny sizes (embeddings 6, hidden 5, attentional state 4, 2 layers, no dropout)."""
    luong = wiring == "modelp"
    settings = dict(
        encoder_embed_dim=6, encoder_hidden_size=5, encoder_layers=2, encoder_bidirectional=True,
        decoder_embed_dim=6, decoder_hidden_size=5, decoder_out_embed_dim=4, decoder_layers=2,
        dropout=0.0, luong_attention=luong, input_feeding=luong, no_residuals=not luong,
    )
    settings.update(overrides)
    return HaloSelectiveConfig(**settings)


@pytest.fixture
def build_selective(toy_task):
    """Return a factory of tiny selective models seeded with ``torch.manual_seed(0)``."""

    def build(wiring, task=toy_task, **overrides):
        torch.manual_seed(0)
        return HaloSelectiveModel.build_model(selective_config(wiring, **overrides), task)

    return build


def halo_criterion(task, **overrides):
    settings = dict(halo_samples=2, sentence_avg=False)
    settings.update(overrides)
    return HaloCrossEntropyCriterion.build_criterion(HaloCrossEntropyConfig(**settings), task)


def joint_log_probs(model, sample):
    """Run the model on a sample and return ``(B, T, V)`` normalized log-probabilities."""
    net_output = model(**sample["net_input"])
    return model.get_normalized_probs(net_output, log_probs=True)


# The joint distribution


def test_tagged_log_probs_hand_case():
    # P(predicate) = 1/4 and P(argument) = 3/4. Equal token scores give 1/2 to each of the two
    # predicate tokens and 1/3 to each of the three argument tokens.
    token_class = torch.tensor([-1, 0, 0, 1, 1, 1, -1])
    tag_logits = torch.tensor([[0.0, math.log(3.0)]])  # (1, 2)
    token_logits = torch.zeros(1, 2, 7)  # (1, n, V)
    expected = torch.tensor([[0.0, 1 / 8, 1 / 8, 1 / 4, 1 / 4, 1 / 4, 0.0]])

    lprobs = tagged_log_probs(tag_logits, token_logits, token_class)

    assert torch.allclose(lprobs.exp(), expected, atol=1e-7)
    assert lprobs[0, 0].item() == NO_TAG_LOG_PROB
    assert lprobs[0, 6].item() == NO_TAG_LOG_PROB


def test_joint_nll_is_tag_plus_token():
    torch.manual_seed(0)
    token_class = torch.tensor([-1, 0, 1, 0, 1, 1, 0])
    tag_logits = torch.randn(2, 3, 2)  # (B, T, n)
    token_logits = torch.randn(2, 3, 2, 7)  # (B, T, n, V)
    target = torch.tensor([[1, 2, 6], [4, 3, 5]])  # (B, T), every gold token has a tag

    lprobs = tagged_log_probs(tag_logits, token_logits, token_class)
    joint_nll = F.nll_loss(lprobs.view(-1, 7), target.view(-1), reduction="sum")

    expected = 0.0
    for b in range(2):
        for t in range(3):
            y = int(target[b, t])
            tag = int(token_class[y])
            members = (token_class == tag).nonzero().squeeze(1)
            log_tag = F.log_softmax(tag_logits[b, t], dim=-1)[tag]
            log_token = token_logits[b, t, tag, y] - token_logits[b, t, tag, members].logsumexp(0)
            expected -= (log_tag + log_token).item()
    assert joint_nll.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("wiring", WIRINGS)
def test_model_probs_sum_to_one(wiring, build_selective, make_batch, build_dictionary,
                                toy_task):
    # The same target symbols plus an untagged word, as a joined dictionary would contain.
    task = SimpleNamespace(source_dictionary=toy_task.source_dictionary,
                           target_dictionary=build_dictionary(toy_target_symbols() + ["plain"]))
    model = build_selective(wiring, task=task).eval()
    sample = make_batch(SOURCES)
    lprobs = joint_log_probs(model, sample)  # (B, T, V)

    assert torch.allclose(lprobs.exp().sum(-1), torch.ones(lprobs.shape[:2]), atol=1e-5)
    dictionary = task.target_dictionary
    no_class = [dictionary.bos(), dictionary.pad(), dictionary.index("plain")]
    no_class += [i for i, s in enumerate(dictionary.symbols) if s.startswith("madeupword")]
    assert len(no_class) > 3
    assert torch.isfinite(lprobs).all()
    assert lprobs[..., no_class].exp().eq(0).all()
    tagged = [i for i in range(len(dictionary)) if i not in no_class]
    assert lprobs[..., tagged].exp().gt(0).all()


@pytest.mark.parametrize("wiring", WIRINGS)
def test_model_loss_is_token_plus_tag_nll(wiring, build_selective, make_batch, toy_task):
    model = build_selective(wiring).eval()
    sample = make_batch(SOURCES)
    loss, _, _ = halo_criterion(toy_task, halo_weight=0.0)(model, sample)

    # Recompute -log P(t) - log P(y | t) from the selector and the output projection.
    decoder = model.decoder
    features, _ = model.extract_features(**sample["net_input"])  # (B, T, C)
    B, T, _ = features.shape
    z = features[..., :decoder.selector_dim]  # (B, T, Z)
    candidates = features[..., decoder.selector_dim:].view(B, T, 2, decoder.out_dim)
    log_tag = F.log_softmax(decoder.selector(z), dim=-1)  # (B, T, 2)
    token_logits = decoder.output_projection(candidates)  # (B, T, 2, V)
    expected = 0.0
    for b in range(B):
        for t in range(T):
            y = int(sample["target"][b, t])
            if y == toy_task.target_dictionary.pad():
                continue
            tag = int(decoder.token_class[y])
            members = (decoder.token_class == tag).nonzero().squeeze(1)
            log_token = token_logits[b, t, tag, y] - token_logits[b, t, tag, members].logsumexp(0)
            expected -= (log_tag[b, t, tag] + log_token).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# Incremental decoding


def step_by_step(decoder, prev_output_tokens, encoder_out, incremental_state, start):
    """Feed ``prev_output_tokens[:, :t+1]`` for t >= start; return ``(B, T - start, V)``."""
    steps = []
    for t in range(start, prev_output_tokens.size(1)):
        lprobs, _ = decoder(prev_output_tokens[:, :t + 1], encoder_out, incremental_state)
        steps.append(lprobs[:, -1])
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("wiring", WIRINGS)
def test_incremental_matches_full_pass(wiring, build_selective, make_batch):
    model = build_selective(wiring).eval()
    net_input = make_batch(SOURCES)["net_input"]
    prev = net_input["prev_output_tokens"]  # (B, T)
    with torch.no_grad():
        encoder_out = model.encoder(net_input["src_tokens"], net_input["src_lengths"])
        full, _ = model.decoder(prev, encoder_out)  # (B, T, V)
        incremental = step_by_step(model.decoder, prev, encoder_out, {}, start=0)
    assert torch.allclose(incremental, full, atol=1e-5)


@pytest.mark.parametrize("wiring", WIRINGS)
def test_incremental_matches_after_reorder(wiring, build_selective, make_batch):
    model = build_selective(wiring).eval()
    net_input = make_batch(SOURCES)["net_input"]
    prev = net_input["prev_output_tokens"]  # (B, T)
    new_order = torch.tensor([2, 0, 2, 1])  # beam-style: entries repeated and permuted
    split = 3
    with torch.no_grad():
        encoder_out = model.encoder(net_input["src_tokens"], net_input["src_lengths"])
        state = {}
        step_by_step(model.decoder, prev[:, :split], encoder_out, state, start=0)
        model.decoder.reorder_incremental_state_scripting(state, new_order)
        reordered_out = model.encoder.reorder_encoder_out(encoder_out, new_order)
        incremental = step_by_step(model.decoder, prev[new_order], reordered_out, state,
                                   start=split)
        full, _ = model.decoder(prev[new_order], reordered_out)  # (B', T, V)
    assert torch.allclose(incremental, full[:, split:], atol=1e-5)


# Halo on the selector state


def halo_term_of(model, criterion, sample, seed):
    """The Halo term of a sample under the noise drawn after ``torch.manual_seed(seed)``."""
    h, extra = model.extract_features(**sample["net_input"])  # (B, T, C)
    dims = criterion.state_dims(model, h.size(-1))
    torch.manual_seed(seed)
    h_noisy = halo.perturb_dims(h, dims, "uniform", samples=2)  # (K, B, T, C)
    K, B, T, C = h_noisy.shape
    lprobs = criterion.log_probs(model, h_noisy.view(K * B, T, C), extra).view(K, B, T, -1)
    target = sample["target"]
    gold_class = criterion.partition.token_class[target]  # (B, T)
    mask = target.ne(criterion.padding_idx) & gold_class.ge(0)
    return halo.halo_term(lprobs, gold_class, mask, criterion.members(target.device))


@pytest.mark.parametrize("wiring", WIRINGS)
def test_halo_term_moves_with_noise(wiring, build_selective, make_batch, toy_task):
    model = build_selective(wiring).train()
    sample = make_batch(SOURCES)
    criterion = halo_criterion(toy_task)

    terms = [halo_term_of(model, criterion, sample, seed).item() for seed in (0, 1)]
    clean_tag_nll = halo_criterion(toy_task, halo_weight=0.0)(model, sample)[0].item()

    for term in terms:
        assert math.isfinite(term)
        assert term > 0
    assert terms[0] != pytest.approx(terms[1], rel=1e-4)
    assert terms[0] != pytest.approx(clean_tag_nll, rel=1e-4)


@pytest.mark.parametrize("wiring", WIRINGS)
def test_training_step_reads_host_once(wiring, build_selective, make_batch, toy_task,
                                       count_host_reads):
    # As for halo_lstm: one copy of the source lengths per batch, for packing.
    model = build_selective(wiring, encoder_layers=3, decoder_layers=3, dropout=0.2).train()
    sample = make_batch(SOURCES)
    criterion = halo_criterion(toy_task)
    criterion(model, sample)[0].backward()  # the first batch checks the noise bounds

    assert count_host_reads(lambda: criterion(model, sample)[0].backward()) == ["cpu"]


@pytest.mark.parametrize("wiring", WIRINGS)
def test_halo_term_gradients(wiring, build_selective, make_batch, toy_task):
    model = build_selective(wiring).train()
    halo_term_of(model, halo_criterion(toy_task), make_batch(SOURCES), seed=0).backward()
    decoder = model.decoder

    assert decoder.selector.weight.grad.abs().max() > 0
    assert decoder.stacks[0].layers[0].weight_hh_l0.grad.abs().max() > 0
    assert model.encoder.embed_tokens.weight.grad.abs().max() > 0
    # The class mass P(t) does not depend on the token scores within a class.
    assert decoder.output_projection.weight.grad.abs().max() < 1e-6


@pytest.mark.parametrize("wiring,state_size", [("modelz", 5), ("modelp", 4)])
def test_halo_perturbs_only_selector_state(wiring, state_size, build_selective, make_batch,
                                           toy_task, caplog):
    model = build_selective(wiring).train()
    h, _ = model.extract_features(**make_batch(SOURCES)["net_input"])  # (B, T, C)
    with caplog.at_level("INFO"):
        dims = halo_criterion(toy_task).state_dims(model, h.size(-1))
    h_noisy = halo.perturb_dims(h, dims, "uniform", samples=3)  # (K, B, T, C)

    assert dims == slice(0, state_size)
    assert h[..., dims].abs().max() < 1
    assert not torch.equal(h_noisy[..., dims], h[..., dims].expand_as(h_noisy[..., dims]))
    assert torch.equal(h_noisy[..., state_size:], h[..., state_size:].expand(3, -1, -1, -1))
    assert f"Halo perturbs features 0:{state_size} of {h.size(-1)}" in caplog.text


@pytest.mark.parametrize("wiring", WIRINGS)
def test_halo_criterion_chunked_matches(wiring, build_selective, make_batch, toy_task):
    model = build_selective(wiring).train()
    sample = make_batch(SOURCES)
    losses = []
    for chunk_size in (0, 4):
        torch.manual_seed(0)
        _, _, logging_output = halo_criterion(toy_task, halo_chunk_size=chunk_size)(model, sample)
        losses.append(logging_output["halo_loss"].item())
    assert losses[0] > 0
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("wiring", WIRINGS)
def test_halo_criterion_one_projection_call(wiring, build_selective, make_batch, toy_task,
                                           monkeypatch):
    # The selective decoder normalizes in its own way, so the joint call goes through its
    # get_normalized_probs. The clean rows must still give the loss without Halo.
    model = build_selective(wiring).train()
    sample = make_batch(SOURCES)
    clean_nll = halo_criterion(toy_task, halo_weight=0.0)(model, sample)[2]["nll_loss"]
    calls = []
    output_layer = model.decoder.output_layer

    def counting_output_layer(features, **kwargs):
        calls.append(tuple(features.shape))
        return output_layer(features, **kwargs)

    monkeypatch.setattr(model.decoder, "output_layer", counting_output_layer)
    _, _, logging_output = halo_criterion(toy_task, halo_samples=2)(model, sample)

    B, T = sample["target"].shape
    assert calls == [(3 * B, T, calls[0][2])]
    assert logging_output["nll_loss"].item() == pytest.approx(clean_nll.item(), rel=1e-5)


# Configuration


@pytest.mark.parametrize("overrides,flag", [
    (dict(luong_attention=False, input_feeding=True), "--input-feeding"),
    (dict(luong_attention=False, share_decoder_input_output_embed=True),
     "--share-decoder-input-output-embed"),
    (dict(decoder_layers=1), "--encoder-layers"),
    (dict(decoder_hidden_size=7), "--encoder-hidden-size"),
    (dict(dropout=1.0), "--dropout"),
])
def test_config_error_names_flag(overrides, flag):
    with pytest.raises(ValueError, match=re.escape(flag)):
        check_selective_config(selective_config("modelz", **overrides))


def test_partition_tags_special_tokens(build_dictionary):
    dictionary = build_dictionary([predpatt.PRED_OPEN, predpatt.PRED_CLOSE, "w3:p", "w1:a"])
    tags = build_tag_partition(dictionary)
    assert tags.token_class[dictionary.eos()] == 0
    assert tags.token_class[dictionary.unk()] == 1
    assert tags.class_sizes() == [4, 2]


@pytest.mark.parametrize("symbols,missing", [
    ([predpatt.PRED_OPEN, predpatt.PRED_CLOSE, "w3:p"], "argument"),
    (["w1:a", "w2:a_h"], "predicate"),
    (["cat", "sat"], "predicate or argument"),
])
def test_partition_without_tag_words_raises(symbols, missing, build_dictionary):
    # </s> and <unk> are tagged by rule, so they do not count as words of their tag.
    with pytest.raises(ValueError, match=f"found no {missing} tokens"):
        build_tag_partition(build_dictionary(symbols))


@pytest.mark.parametrize("arch,expected", [
    ("halo_modelz", dict(no_residuals=True, luong_attention=False, encoder_bidirectional=True)),
    ("halo_modelp", dict(no_residuals=False, luong_attention=True, input_feeding=True,
                         encoder_bidirectional=True)),
    ("halo_modelp_small", dict(no_residuals=False, luong_attention=True, decoder_hidden_size=128)),
])
def test_arch_defaults(arch, expected, tmp_path):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(tmp_path), "--arch", arch])
    for name, value in expected.items():
        assert getattr(args, name) == value, name


# Through the command-line tools


def test_train_and_generate_end_to_end(tmp_path):
    text_dir, data_dir, save_dir = tmp_path / "text", tmp_path / "data-bin", tmp_path / "ckpt"
    corpus = write_toy_corpus(text_dir, seed=0, sizes={"train": 40, "valid": 6, "test": 5})
    run_tool(
        "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
        "--trainpref", text_dir / "train", "--validpref", text_dir / "valid",
        "--testpref", text_dir / "test", "--destdir", data_dir, "--workers", "1",
    )
    train_log = run_tool(
        "fairseq-train", data_dir, "--user-dir", PACKAGE_DIR, "--arch", "halo_modelp_small",
        "--encoder-embed-dim", "16", "--encoder-hidden-size", "16", "--decoder-embed-dim", "16",
        "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
        "--criterion", "halo_cross_entropy", "--halo-samples", "2",
        "--optimizer", "adam", "--lr", "0.01", "--batch-size", "10",
        "--required-batch-size-multiple", "1", "--max-update", "4",
        "--seed", "3", "--cpu", "--num-workers", "0", "--no-epoch-checkpoints",
        "--save-dir", save_dir,
    )
    assert "Halo perturbs features 0:16 of 48" in train_log

    output = run_tool(
        "fairseq-generate", data_dir, "--user-dir", PACKAGE_DIR,
        "--path", save_dir / "checkpoint_last.pt", "--gen-subset", "test", "--beam", "5",
        "--batch-size", "2", "--required-batch-size-multiple", "1", "--max-len-a", "0",
        "--max-len-b", "12", "--cpu",
    )
    hypotheses = [line.split("\t") for line in output.splitlines() if line.startswith("H-")]
    assert len(hypotheses) == len(corpus["test"])
    for _, score, text in hypotheses:
        assert math.isfinite(float(score))
        for token in text.split():
            assert predpatt.token_tag(token) is not None or token == "<unk>", token
