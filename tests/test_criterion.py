"""The halo_cross_entropy criterion on a tiny halo_lstm model and a hand-written toy batch.

Where a check needs the noise fixed across two runs, ``halo.perturb`` is either replayed with the
same seed or replaced by a deterministic function of ``h``.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from fairseq.criterions.cross_entropy import CrossEntropyCriterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics

from fairseq_halo import halo
from fairseq_halo.criterions.halo_cross_entropy import HaloCrossEntropyCriterion

# B = 3 sentences. With ^(((, )))$ and </s> their targets have 6, 5 and 7 tokens, so T = 7.
SOURCES = ["w1 w3 w2", "w6 w4", "w5 w9 w7 w8"]
# No source word divisible by 3, so no target word is tagged :p.
SOURCES_WITHOUT_PREDICATES = ["w1 w2", "w4 w5 w7", "w8 w10"]


@pytest.fixture
def build_criterion(toy_task):
    """Return a factory of criteria with the defaults of HaloCrossEntropyConfig."""

    def build(**overrides):
        settings = dict(
            halo_weight=1.0, halo_alpha=1.0, halo_beta=19.0, halo_samples=1,
            halo_noise="uniform", halo_sigma=1.0, halo_partition="tag", halo_class_file=None,
            halo_unk_class="argument", halo_chunk_size=0, label_smoothing=0.0,
            sentence_avg=False,
        )
        settings.update(overrides)
        return HaloCrossEntropyCriterion(toy_task, **settings)

    return build


@pytest.fixture
def model(build_model):
    return build_model().train()


@pytest.fixture
def sample(make_batch):
    return make_batch(SOURCES)


def fixed_neighbours(*transforms):
    """Return a stand-in for halo.perturb whose K neighbours are ``transform(h)``."""

    def perturb(h, noise, samples, alpha, beta, sigma):
        assert samples == len(transforms)
        return torch.stack([transform(h) for transform in transforms])  # (K, B, T, C)

    return perturb


def run(criterion, model, sample, seed=0):
    torch.manual_seed(seed)
    return criterion(model, sample)


def class_indices(dictionary):
    """Return the predicate and argument indices of the toy dictionary, by the tag rule."""
    predicate, argument = [], []
    for index, symbol in enumerate(dictionary.symbols):
        if symbol.endswith(":p") or symbol in ("^(((", ")))$", "</s>"):
            predicate.append(index)
        elif symbol.endswith(":a") or symbol == "<unk>":
            argument.append(index)
    return predicate, argument


def parameter_grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# Reduction to cross entropy and label smoothing


def test_halo_off_equals_cross_entropy(toy_task, build_criterion, model, sample):
    loss, sample_size, logging_output = run(build_criterion(halo_weight=0.0), model, sample)
    expected, expected_size, expected_output = run(
        CrossEntropyCriterion(toy_task, sentence_avg=False), model, sample)

    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert sample_size == expected_size
    assert logging_output["nll_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert "halo_loss" not in logging_output


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_label_smoothing_matches_fairseq(toy_task, build_criterion, model, sample, epsilon):
    loss, _, logging_output = run(
        build_criterion(halo_weight=0.0, label_smoothing=epsilon), model, sample)
    expected, _, expected_output = run(
        LabelSmoothedCrossEntropyCriterion(toy_task, False, label_smoothing=epsilon),
        model, sample)

    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logging_output["nll_loss"].item() == pytest.approx(
        expected_output["nll_loss"].item(), rel=1e-6)


def test_label_smoothing_formula_by_hand(toy_task, build_criterion, model, sample):
    # loss = (1 - eps - eps / (V - 1)) * nll + eps / (V - 1) * sum_v -log p(v), over real tokens.
    epsilon = 0.2
    loss, _, _ = run(build_criterion(halo_weight=0.0, label_smoothing=epsilon), model, sample)
    with torch.no_grad():
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    target = sample["target"]
    real = target.ne(toy_task.target_dictionary.pad())
    vocabulary_size = lprobs.size(-1)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[real].sum()
    smooth = -lprobs.sum(-1)[real].sum()
    epsilon_i = epsilon / (vocabulary_size - 1)
    expected = (1 - epsilon - epsilon_i) * nll + epsilon_i * smooth

    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_item_losses_sum_to_batch(build_criterion, model, make_batch, monkeypatch):
    monkeypatch.setattr(halo, "perturb", fixed_neighbours(lambda h: 0.5 * h))
    criterion = build_criterion(halo_weight=1.0)
    batch_loss, _, batch_output = run(criterion, model, make_batch(SOURCES))
    item_losses = [run(criterion, model, make_batch([line]))[0].item() for line in SOURCES]
    item_halo = [run(criterion, model, make_batch([line]))[2]["halo_loss"].item()
                 for line in SOURCES]

    assert batch_loss.item() == pytest.approx(sum(item_losses), rel=1e-5)
    assert batch_output["halo_loss"].item() == pytest.approx(sum(item_halo), rel=1e-5)


def test_unreduced_losses_sum_to_reduced(build_criterion, model, sample, monkeypatch):
    monkeypatch.setattr(halo, "perturb", fixed_neighbours(lambda h: 0.5 * h))
    criterion = build_criterion()
    reduced_loss = run(criterion, model, sample)[0]
    torch.manual_seed(0)
    token_losses = criterion(model, sample, reduce=False)[0]

    assert token_losses.sum().item() == pytest.approx(reduced_loss.item(), rel=1e-5)


# The Halo term inside the criterion


def test_halo_term_matches_brute_force(toy_task, build_criterion, model, sample):
    # Replay the criterion's draws: same seed, then features and perturb in the same order.
    weight = 0.5
    loss, _, logging_output = run(build_criterion(halo_weight=weight), model, sample, seed=3)
    torch.manual_seed(3)
    with torch.no_grad():
        h, _ = model.extract_features(**sample["net_input"])  # (B, T, C)
        h_noisy = halo.perturb(h, "uniform", 1, 1.0, 19.0, 1.0)  # (1, B, T, C)
        probs = F.softmax(model.output_layer(h_noisy[0]), dim=-1)  # (B, T, V)
    predicate, argument = class_indices(toy_task.target_dictionary)
    target = sample["target"]
    expected = 0.0
    for b in range(target.size(0)):
        for t in range(target.size(1)):
            gold = int(target[b, t])
            if gold == toy_task.target_dictionary.pad():
                continue
            members = predicate if gold in predicate else argument
            expected -= math.log(sum(float(probs[b, t, v]) for v in members))

    assert logging_output["halo_loss"].item() == pytest.approx(expected, rel=1e-5)
    # Every real target token has a class in the toy dictionary: 6 + 5 + 7 tokens.
    assert int(logging_output["halo_tokens"]) == 18
    assert loss.item() == pytest.approx(
        logging_output["nll_loss"].item() + weight * expected, rel=1e-5)


def test_singleton_identity_noise_equals_nll(build_criterion, model, sample, monkeypatch):
    # With h_noisy = h, the singleton partition's q is the gold token's own probability.
    monkeypatch.setattr(halo, "perturb", fixed_neighbours(lambda h: h))
    _, _, logging_output = run(build_criterion(halo_partition="singleton"), model, sample)

    assert logging_output["halo_loss"].item() == pytest.approx(
        logging_output["nll_loss"].item(), rel=1e-5)


def test_halo_samples_average(build_criterion, model, sample, monkeypatch):
    first, second = (lambda h: 0.5 * h), (lambda h: 0.2 - 0.7 * h)
    monkeypatch.setattr(halo, "perturb", fixed_neighbours(first, second))
    both = run(build_criterion(halo_samples=2), model, sample)[2]["halo_loss"].item()
    monkeypatch.setattr(halo, "perturb", fixed_neighbours(first))
    only_first = run(build_criterion(), model, sample)[2]["halo_loss"].item()
    monkeypatch.setattr(halo, "perturb", fixed_neighbours(second))
    only_second = run(build_criterion(), model, sample)[2]["halo_loss"].item()

    assert both == pytest.approx((only_first + only_second) / 2, rel=1e-5)


@pytest.mark.parametrize("chunk_size,epsilon", [(4, 0.0), (7, 0.0), (4, 0.1)])
def test_chunked_equals_unchunked(build_criterion, model, sample, chunk_size, epsilon):
    # B * T = 3 * 7 = 21 positions, so chunks of 4 leave a last chunk of 1. The same seed
    # gives the same noise in both modes. Unchunked, the clean and noisy rows share one
    # projection and one gradient buffer. Chunked, the clean rows are projected on their own.
    loss, _, logging_output = run(
        build_criterion(halo_samples=2, label_smoothing=epsilon), model, sample, seed=5)
    loss.backward()
    grads = parameter_grads(model)
    model.zero_grad()
    chunked_loss, _, chunked_output = run(
        build_criterion(halo_samples=2, halo_chunk_size=chunk_size, label_smoothing=epsilon),
        model, sample, seed=5)
    chunked_loss.backward()
    chunked_grads = parameter_grads(model)

    assert chunked_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert chunked_output["halo_loss"].item() == pytest.approx(
        logging_output["halo_loss"].item(), rel=1e-5)
    assert chunked_grads.keys() == grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(chunked_grads[name], grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("samples", [1, 3])
def test_clean_and_noisy_share_projection(build_criterion, model, sample,
                                          monkeypatch, samples):
    calls = []
    output_layer = model.output_layer

    def counting_output_layer(features, **kwargs):
        calls.append(tuple(features.shape))
        return output_layer(features, **kwargs)

    monkeypatch.setattr(model, "output_layer", counting_output_layer)
    run(build_criterion(halo_samples=samples), model, sample)[0].backward()

    B, T = sample["target"].shape
    assert len(calls) == 1
    assert calls[0][:2] == ((1 + samples) * B, T)


def test_label_smoothing_with_halo(toy_task, build_criterion, model, sample):
    # The clean part of the joint call gives fairseq's label-smoothed loss.
    weight, epsilon = 0.5, 0.1
    loss, _, logging_output = run(
        build_criterion(halo_weight=weight, label_smoothing=epsilon), model, sample)
    expected, _, expected_output = run(
        LabelSmoothedCrossEntropyCriterion(toy_task, False, label_smoothing=epsilon),
        model, sample)

    assert logging_output["nll_loss"].item() == pytest.approx(
        expected_output["nll_loss"].item(), rel=1e-5)
    assert loss.item() == pytest.approx(
        expected.item() + weight * logging_output["halo_loss"].item(), rel=1e-5)


def test_gradients_reach_encoder(build_criterion, model, sample):
    # The Halo term's own gradient is the difference of the gradients with and without it.
    embedding = model.encoder.embed_tokens.weight
    run(build_criterion(halo_weight=0.0), model, sample, seed=1)[0].backward()
    without_halo = embedding.grad.clone()
    model.zero_grad()
    run(build_criterion(halo_weight=1.0), model, sample, seed=1)[0].backward()
    with_halo = embedding.grad.clone()

    assert with_halo.abs().sum() > 0
    assert (with_halo - without_halo).abs().sum() > 0


def test_padding_does_not_change_loss(toy_task, build_criterion, model, sample, monkeypatch):
    # Two more padded source positions (left) and target positions (right).
    monkeypatch.setattr(halo, "perturb", fixed_neighbours(lambda h: 0.5 * h + 0.1))
    criterion = build_criterion()
    loss, sample_size, logging_output = run(criterion, model, sample)
    pad = toy_task.target_dictionary.pad()
    padded = {
        "net_input": dict(sample["net_input"]),
        "target": F.pad(sample["target"], (0, 2), value=pad),
        "ntokens": sample["ntokens"],
    }
    net_input = padded["net_input"]
    net_input["src_tokens"] = F.pad(net_input["src_tokens"], (2, 0), value=pad)
    net_input["prev_output_tokens"] = F.pad(net_input["prev_output_tokens"], (0, 2), value=pad)
    padded_loss, padded_size, padded_output = run(criterion, model, padded)

    assert padded_loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert padded_output["halo_loss"].item() == pytest.approx(
        logging_output["halo_loss"].item(), rel=1e-5)
    assert int(padded_output["halo_tokens"]) == int(logging_output["halo_tokens"])
    assert padded_size == sample_size


def test_eval_mode_skips_halo(build_criterion, model, sample):
    # Validation uses the clean loss only.
    loss, _, logging_output = run(build_criterion(halo_weight=1.0), model.eval(), sample)

    assert "halo_loss" not in logging_output
    assert loss.item() == pytest.approx(logging_output["nll_loss"].item(), rel=1e-6)


def test_sentence_avg_sample_size(build_criterion, model, sample):
    _, sample_size, logging_output = run(build_criterion(sentence_avg=True), model, sample)

    assert sample_size == 3
    assert logging_output["nsentences"] == 3


# Batches without a class


def test_no_classed_position_adds_zero(tmp_path, build_criterion, model, make_batch):
    # The class file names only w10:a and w11:a, which the batch does not contain.
    class_file = tmp_path / "classes.tsv"
    class_file.write_text("w10:a\tx\nw11:a\ty\n", encoding="utf-8")
    sample = make_batch(SOURCES)
    criterion = build_criterion(halo_partition="tsv", halo_class_file=str(class_file))
    loss, _, logging_output = run(criterion, model, sample)
    loss.backward()
    off_loss = run(build_criterion(halo_weight=0.0), model, sample)[0]

    assert logging_output["halo_loss"].item() == 0.0
    assert int(logging_output["halo_tokens"]) == 0
    assert loss.item() == off_loss.item()
    for name, grad in parameter_grads(model).items():
        assert torch.isfinite(grad).all(), name


def test_no_predicate_batch_finite(tmp_path, toy_task, build_criterion, model, make_batch):
    # Classes from the words' tags only, and a batch whose words are all :a.
    symbols = toy_task.target_dictionary.symbols
    lines = [f"{s}\t{'predicate' if s.endswith(':p') else 'argument'}\n"
             for s in symbols if s.endswith((":p", ":a"))]
    class_file = tmp_path / "classes.tsv"
    class_file.write_text("".join(lines), encoding="utf-8")
    criterion = build_criterion(halo_partition="tsv", halo_class_file=str(class_file))
    loss, _, logging_output = run(criterion, model, make_batch(SOURCES_WITHOUT_PREDICATES))
    loss.backward()

    assert math.isfinite(loss.item())
    assert logging_output["halo_loss"].item() > 0
    # 2 + 3 + 2 argument words count, because brackets and </s> are not in the class file.
    assert int(logging_output["halo_tokens"]) == 7
    for name, grad in parameter_grads(model).items():
        assert torch.isfinite(grad).all(), name


# Logged metrics


def reduced(logging_outputs):
    with metrics.aggregate() as aggregator:
        HaloCrossEntropyCriterion.reduce_metrics(logging_outputs)
    return aggregator.get_smoothed_values()


def test_reduce_metrics_by_hand():
    outputs = [
        {"loss": 6.0, "nll_loss": 4.0, "ntokens": 3, "nsentences": 1, "sample_size": 3,
         "halo_loss": 2.0, "halo_tokens": 2},
        {"loss": 3.0, "nll_loss": 2.0, "ntokens": 2, "nsentences": 1, "sample_size": 2,
         "halo_loss": 1.0, "halo_tokens": 1},
    ]
    values = reduced(outputs)

    # Bits per token: loss 9 / 5, nll 6 / 5 and Halo 3 / 3 nats, divided by ln 2. ppl = 2^nll.
    assert values["loss"] == pytest.approx(9 / 5 / math.log(2), abs=1e-3)
    assert values["nll_loss"] == pytest.approx(6 / 5 / math.log(2), abs=1e-3)
    assert values["halo_loss"] == pytest.approx(1 / math.log(2), abs=1e-3)
    assert values["ppl"] == pytest.approx(2 ** (6 / 5 / math.log(2)), abs=1e-2)


def test_reduce_metrics_from_forward(build_criterion, model, sample):
    loss, sample_size, logging_output = run(build_criterion(), model, sample)
    values = reduced([logging_output])

    assert {"loss", "nll_loss", "ppl", "halo_loss"} <= values.keys()
    assert values["loss"] == pytest.approx(loss.item() / sample_size / math.log(2), abs=1e-3)
    assert math.isfinite(values["halo_loss"])


def test_reduce_metrics_without_halo(build_criterion, model, sample):
    values = reduced([run(build_criterion(halo_weight=0.0), model, sample)[2]])

    assert {"loss", "nll_loss", "ppl"} <= values.keys()
    assert "halo_loss" not in values


def test_reduce_metrics_no_halo_tokens():
    outputs = [{"loss": 2.0, "nll_loss": 2.0, "ntokens": 2, "nsentences": 1, "sample_size": 2,
                "halo_loss": 0.0, "halo_tokens": 0}]
    values = reduced(outputs)

    assert values["halo_loss"] == 0.0


# Option checks


@pytest.mark.parametrize("settings, message", [
    (dict(halo_weight=-1.0), "--halo-weight must be >= 0"),
    (dict(label_smoothing=1.0), "--label-smoothing must be in \\[0, 1\\)"),
    (dict(label_smoothing=-0.1), "--label-smoothing must be in \\[0, 1\\)"),
    (dict(halo_chunk_size=-1), "--halo-chunk-size must be >= 0"),
    (dict(halo_alpha=0.0), "--halo-alpha must be > 0"),
    (dict(halo_beta=-1.0), "--halo-beta must be > 0"),
    (dict(halo_noise="gaussian", halo_sigma=0.0), "--halo-sigma must be > 0"),
    (dict(halo_noise="atanh-gaussian", halo_sigma=-2.0), "--halo-sigma must be > 0"),
    (dict(halo_samples=0), "--halo-samples must be at least 1"),
    (dict(halo_partition="tsv"), "--halo-class-file"),
    (dict(halo_unk_class="verb"), "--halo-unk-class 'verb' is invalid"),
])
def test_criterion_rejects_invalid_options(build_criterion, settings, message):
    with pytest.raises(ValueError, match=message):
        build_criterion(**settings)


def test_bounded_noise_rejects_unbounded_features(build_criterion, model, sample, monkeypatch):
    # Features beyond [-1, 1] (as a transformer's) stop the bounded recipes with the fix.
    extract_features = model.extract_features
    monkeypatch.setattr(
        model, "extract_features",
        lambda **net_input: (lambda h, extra: (3 * h + 2, extra))(*extract_features(**net_input)),
    )

    with pytest.raises(ValueError, match="use --halo-noise gaussian"):
        run(build_criterion(halo_noise="uniform"), model, sample)
    loss = run(build_criterion(halo_noise="gaussian"), model, sample)[0]
    assert math.isfinite(loss.item())


# Half precision: the criterion computes in float32 whatever the model's dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_loss_float32(build_criterion, build_model, sample, dtype,
                                           monkeypatch):
    # A float32 and a half-precision copy of the same model see the same neighbours.
    reference = build_model().train()
    model = build_model().to(dtype).train()
    monkeypatch.setattr(halo, "perturb", fixed_neighbours(lambda h: 0.5 * h + 0.25))
    loss, _, logging_output = run(build_criterion(), model, sample)
    expected, _, expected_output = run(build_criterion(), reference, sample)
    loss.backward()

    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected.item(), rel=3e-2)
    assert logging_output["halo_loss"].item() == pytest.approx(
        expected_output["halo_loss"].item(), rel=3e-2)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads
    assert all(torch.isfinite(grad).all() for grad in grads)


# Host reads


@pytest.mark.parametrize("input_feeding", [False, True])
def test_training_step_reads_host_once(build_criterion, build_model, sample, count_host_reads,
                                       input_feeding):
    # Packing copies the source lengths to the host once per batch, whatever the number of
    # layers. Nothing else in the forward and backward passes reads a tensor value there.
    model = build_model(encoder_layers=3, decoder_layers=3, encoder_bidirectional=True,
                        input_feeding=input_feeding, dropout=0.2).train()
    criterion = build_criterion(halo_samples=2)
    run(criterion, model, sample)[0].backward()  # the first batch checks the noise bounds

    assert count_host_reads(lambda: run(criterion, model, sample)[0].backward()) == ["cpu"]
