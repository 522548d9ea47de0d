"""The pure Halo functions: class mass q, the Beta draws of lambda_, the noise recipes, the term.

Brute-force references loop over the vocabulary with Python floats. Tolerances of sampled
moments are a few standard errors of the estimate.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from fairseq_halo import halo

# Three classes over V = 7, and index 4 has no class.
MEMBERS = [torch.tensor([0, 3, 5]), torch.tensor([1, 2]), torch.tensor([6])]

# Shape of the many-draw checks: 7^5 = 16807 draws.
MANY = (7, 7, 7, 7, 7)


def random_lprobs(*shape, dtype=torch.float32):
    torch.manual_seed(0)
    return F.log_softmax(torch.randn(*shape, dtype=dtype), dim=-1)


def brute_log_q(lprobs_row, members):
    """log q of one position: the log of summed probabilities per class, by explicit loops."""
    return [math.log(sum(math.exp(float(lprobs_row[v])) for v in index.tolist()))
            for index in members]


def brute_halo_term(lprobs, gold_class, mask, members):
    """-sum over masked positions of the mean over K of log q[gold class], by explicit loops."""
    K, B, T, _ = lprobs.shape
    total = 0.0
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            gold = int(gold_class[b, t])
            total -= sum(brute_log_q(lprobs[k, b, t], members)[gold] for k in range(K)) / K
    return total


def fixed_lambda(value, shapes=None):
    """Return a stand-in for halo.sample_lambda that draws the constant ``value``."""

    def sample(shape, alpha, beta, like):
        if shapes is not None:
            shapes.append(tuple(shape))
        return torch.full(shape, value, dtype=like.dtype, device=like.device)

    return sample


# Class mass q


def test_class_log_mass_brute_force():
    lprobs = random_lprobs(2, 3, 7)  # (B, T, V)
    log_q = halo.class_log_mass(lprobs, MEMBERS)  # (B, T, 3)

    assert log_q.shape == (2, 3, 3)
    for b in range(2):
        for t in range(3):
            assert log_q[b, t].tolist() == pytest.approx(brute_log_q(lprobs[b, t], MEMBERS),
                                                         abs=1e-6)


def test_class_log_mass_sums_one():
    # With every index in some class, the class masses add up to 1.
    lprobs = random_lprobs(2, 3, 5)
    members = [torch.tensor([0, 4]), torch.tensor([1, 2, 3])]
    q = halo.class_log_mass(lprobs, members).exp()

    assert torch.allclose(q.sum(-1), torch.ones(2, 3))


def test_class_log_mass_tiny_class_finite():
    # A class whose probability underflows in float32 keeps a finite log mass.
    logits = torch.tensor([[0.0, -200.0, -210.0, 5.0]])
    lprobs = F.log_softmax(logits, dim=-1)
    log_q = halo.class_log_mass(lprobs, [torch.tensor([1, 2]), torch.tensor([0, 3])])

    # log Z = 5 + log(1 + e^-5), so log q_0 = -200 - log Z + log(1 + e^-10).
    log_z = 5.0 + math.log(1 + math.exp(-5.0))
    assert torch.isfinite(log_q).all()
    assert log_q[0, 0].item() == pytest.approx(-200.0 - log_z + math.log(1 + math.exp(-10.0)),
                                               abs=1e-3)


def test_gold_class_log_mass_brute_force():
    lprobs = random_lprobs(2, 2, 3, 7)  # (K, B, T, V)
    gold_class = torch.tensor([[0, 2, 1], [1, -1, 0]])  # (B, T)
    log_q = halo.gold_class_log_mass(lprobs, gold_class, MEMBERS)  # (K, B, T)

    assert log_q.shape == (2, 2, 3)
    for k in range(2):
        for b in range(2):
            for t in range(3):
                gold = int(gold_class[b, t])
                if gold < 0:
                    continue
                expected = brute_log_q(lprobs[k, b, t], MEMBERS)[gold]
                assert log_q[k, b, t].item() == pytest.approx(expected, abs=1e-6)


def test_gold_class_log_mass_singleton():
    # For the singleton partition q is the probability of the gold token itself.
    lprobs = random_lprobs(2, 2, 3, 7)
    target = torch.tensor([[0, 6, 2], [5, 5, 1]])
    log_q = halo.gold_class_log_mass(lprobs, target, None, singleton_ids=target)

    for k in range(2):
        for b in range(2):
            for t in range(3):
                assert log_q[k, b, t].item() == lprobs[k, b, t, target[b, t]].item()


# The Halo term


def test_halo_term_brute_force():
    lprobs = random_lprobs(3, 2, 3, 7)
    gold_class = torch.tensor([[0, 2, 1], [1, -1, 0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    term = halo.halo_term(lprobs, gold_class, mask, MEMBERS)

    assert term.item() == pytest.approx(brute_halo_term(lprobs, gold_class, mask, MEMBERS),
                                        abs=1e-5)


def test_halo_term_averages_samples():
    # K = 3 neighbours: the term is the mean of the three one-neighbour terms.
    lprobs = random_lprobs(3, 2, 3, 7)
    gold_class = torch.tensor([[0, 2, 1], [1, 1, 0]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    term = halo.halo_term(lprobs, gold_class, mask, MEMBERS)
    singles = [halo.halo_term(lprobs[k:k + 1], gold_class, mask, MEMBERS) for k in range(3)]

    assert term.item() == pytest.approx(sum(s.item() for s in singles) / 3, abs=1e-5)


def test_halo_term_empty_mask_exactly_zero():
    # No classed position: the term adds exactly 0 and a gradient of exactly 0.
    lprobs = random_lprobs(2, 2, 3, 7).requires_grad_(True)
    gold_class = torch.tensor([[0, 2, 1], [1, 1, 0]])
    mask = torch.zeros(2, 3, dtype=torch.bool)
    term = halo.halo_term(lprobs, gold_class, mask, MEMBERS)
    term.backward()

    assert term.item() == 0.0
    assert torch.equal(lprobs.grad, torch.zeros(2, 2, 3, 7))


def test_halo_term_masked_minus_inf_ignored():
    # A masked-out position whose class has log q = -inf leaves the value exactly 0.
    lprobs = random_lprobs(2, 2, 3, 7).clone()
    lprobs[..., 6] = float("-inf")
    gold_class = torch.full((2, 3), 2)
    mask = torch.zeros(2, 3, dtype=torch.bool)

    assert halo.halo_term(lprobs, gold_class, mask, MEMBERS).item() == 0.0


def test_halo_term_padding_invariant():
    # Two padded positions and a padded row, masked out, leave the term unchanged.
    lprobs = random_lprobs(2, 2, 3, 7)
    gold_class = torch.tensor([[0, 2, 1], [1, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    term = halo.halo_term(lprobs, gold_class, mask, MEMBERS)

    torch.manual_seed(1)
    padded_lprobs = F.log_softmax(torch.randn(2, 3, 5, 7), dim=-1)
    padded_lprobs[:, :2, :3] = lprobs
    padded_gold = torch.tensor([[0, 2, 1, -1, -1], [1, 0, 0, -1, -1], [0, 1, 2, 0, 1]])
    padded_mask = torch.zeros(3, 5, dtype=torch.bool)
    padded_mask[:2, :3] = mask
    padded_term = halo.halo_term(padded_lprobs, padded_gold, padded_mask, MEMBERS)

    assert padded_term.item() == pytest.approx(term.item(), abs=1e-6)


def test_halo_term_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 7, dtype=torch.float64, requires_grad=True)
    gold_class = torch.tensor([[0, 2, 1], [1, -1, 0]])
    mask = torch.tensor([[True, True, True], [True, False, True]])

    def term(x):
        return halo.halo_term(F.log_softmax(x, dim=-1), gold_class, mask, MEMBERS)

    assert torch.autograd.gradcheck(term, (logits,))


def test_gold_class_log_mass_gradcheck():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 3, 7, dtype=torch.float64, requires_grad=True)
    gold_class = torch.tensor([[0, 2, 1], [1, 1, 0]])

    def log_q(x):
        return halo.gold_class_log_mass(F.log_softmax(x, dim=-1), gold_class, MEMBERS)

    assert torch.autograd.gradcheck(log_q, (logits,))


@pytest.mark.parametrize("noise", ["uniform", "atanh-gaussian", "gaussian"])
def test_halo_pipeline_gradcheck(noise):
    # h -> h_noisy -> output layer -> log q, with the noise fixed by seeding before every call.
    torch.manual_seed(0)
    h = (torch.rand(2, 3, 4, dtype=torch.float64) - 0.5).requires_grad_(True)  # (B, T, C)
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)  # (V, C)
    gold_class = torch.tensor([[0, 2, 1], [1, -1, 0]])
    mask = gold_class.ge(0)

    def term(h, weight):
        torch.manual_seed(1)
        h_noisy = halo.perturb(h, noise, samples=2, alpha=2.0, beta=5.0, sigma=0.5)
        lprobs = F.log_softmax(h_noisy @ weight.t(), dim=-1)  # (K, B, T, V)
        return halo.halo_term(lprobs, gold_class, mask, MEMBERS)

    assert torch.autograd.gradcheck(term, (h, weight))


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 6, 7])
def test_chunked_term_matches_unchunked(chunk_size):
    # B * T = 6 positions, so chunks of 4 leave a last chunk of 2.
    torch.manual_seed(0)
    h_noisy = torch.rand(2, 2, 3, 4).mul(2).sub(1).requires_grad_(True)  # (K, B, T, C)
    layer = torch.nn.Linear(4, 7)
    gold_class = torch.tensor([[0, 2, 1], [1, -1, 0]])
    mask = torch.tensor([[True, True, False], [True, False, True]])

    def log_probs_fn(states):
        return F.log_softmax(layer(states), dim=-1)

    full = halo.halo_term(log_probs_fn(h_noisy), gold_class, mask, MEMBERS)
    full_grads = torch.autograd.grad(full, [h_noisy, layer.weight, layer.bias])
    chunked = halo.chunked_halo_term(h_noisy, gold_class, mask, log_probs_fn, MEMBERS, None,
                                     chunk_size)
    chunked_grads = torch.autograd.grad(chunked, [h_noisy, layer.weight, layer.bias])

    assert chunked.item() == pytest.approx(full.item(), abs=1e-5)
    for chunked_grad, full_grad in zip(chunked_grads, full_grads):
        assert torch.allclose(chunked_grad, full_grad, atol=1e-6)


def test_chunked_term_singleton_matches_unchunked():
    torch.manual_seed(0)
    h_noisy = torch.rand(2, 2, 3, 4).mul(2).sub(1)  # (K, B, T, C)
    layer = torch.nn.Linear(4, 7)
    target = torch.tensor([[0, 6, 2], [5, 5, 1]])
    mask = torch.tensor([[True, True, True], [True, False, True]])

    def log_probs_fn(states):
        return F.log_softmax(layer(states), dim=-1)

    full = halo.halo_term(log_probs_fn(h_noisy), target, mask, None, target)
    chunked = halo.chunked_halo_term(h_noisy, target, mask, log_probs_fn, None, target, 4)

    assert chunked.item() == pytest.approx(full.item(), abs=1e-5)


# lambda_ ~ Beta(alpha, beta)


@pytest.mark.parametrize("alpha, beta", [(1.0, 19.0), (2.0, 5.0), (0.5, 0.5)])
def test_sample_lambda_beta_moments(alpha, beta):
    torch.manual_seed(0)
    draws = halo.sample_lambda(MANY, alpha, beta, torch.empty(0, dtype=torch.float64)).flatten()
    n = draws.numel()
    mean, variance = alpha / (alpha + beta), alpha * beta / ((alpha + beta) ** 2
                                                             * (alpha + beta + 1))
    sample_mean = draws.mean().item()
    sample_variance = draws.var().item()
    fourth_moment = (draws - draws.mean()).pow(4).mean().item()

    # Standard errors of the sample mean and of the sample variance.
    mean_error = math.sqrt(variance / n)
    variance_error = math.sqrt((fourth_moment - sample_variance ** 2) / n)
    assert abs(sample_mean - mean) < 4 * mean_error
    assert abs(sample_variance - variance) < 4 * variance_error


def test_sample_lambda_shape_dtype_range():
    torch.manual_seed(0)
    like = torch.zeros(2, dtype=torch.float64)
    lambda_ = halo.sample_lambda((2, 3, 4, 1), 1.0, 19.0, like)

    assert lambda_.shape == (2, 3, 4, 1)
    assert lambda_.dtype == torch.float64
    assert ((lambda_ >= 0) & (lambda_ <= 1)).all()


def test_beta_moments_formula():
    # Beta(1, 19): mean 1/20, variance 19 / (20^2 * 21).
    mean, variance = halo.beta_moments(1.0, 19.0)

    assert mean == pytest.approx(0.05)
    assert variance == pytest.approx(19 / (400 * 21))


# Noise recipes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
def test_open_bound_inside_unit(dtype):
    bound = torch.tensor(halo.open_bound(dtype), dtype=dtype)

    assert bound < 1
    assert bound >= 1 - torch.finfo(dtype).eps


def test_perturb_uniform_lambda_zero_keeps_h(monkeypatch):
    monkeypatch.setattr(halo, "sample_lambda", fixed_lambda(0.0))
    torch.manual_seed(0)
    h = torch.rand(2, 3, 4) - 0.5
    h_noisy = halo.perturb(h, "uniform", samples=2)

    assert h_noisy.shape == (2, 2, 3, 4)
    assert torch.equal(h_noisy, h.expand(2, -1, -1, -1))


def test_perturb_uniform_lambda_one_is_uniform(monkeypatch):
    # lambda_ = 1 gives h_noisy = h_uniform ~ Uniform(-1, 1): mean 0, variance 1/3.
    monkeypatch.setattr(halo, "sample_lambda", fixed_lambda(1.0))
    torch.manual_seed(0)
    h = torch.full((7, 7, 7, 7), 0.9)
    h_uniform = halo.perturb(h, "uniform", samples=7).flatten()
    n = h_uniform.numel()

    assert abs(h_uniform.mean().item()) < 4 * math.sqrt(1 / 3 / n)
    # Variance of the sample variance of Uniform(-1, 1): (mu4 - sigma^4) / n = (1/5 - 1/9) / n.
    assert abs(h_uniform.var().item() - 1 / 3) < 4 * math.sqrt((1 / 5 - 1 / 9) / n)


def test_perturb_uniform_interpolates_towards_draw(monkeypatch):
    # With lambda_ = 1/4, h_uniform = (h_noisy - 3/4 h) / (1/4) must lie in (-1, 1).
    shapes = []
    monkeypatch.setattr(halo, "sample_lambda", fixed_lambda(0.25, shapes))
    torch.manual_seed(0)
    h = torch.rand(2, 3, 4, dtype=torch.float64) * 2 - 1
    h_noisy = halo.perturb(h, "uniform", samples=3)
    h_uniform = (h_noisy - 0.75 * h) / 0.25

    assert (h_uniform.abs() < 1).all()
    # One lambda_ per neighbour and position, shared by the C features.
    assert shapes == [(3, 2, 3, 1)]


def test_perturb_gradient_one_minus_lambda(monkeypatch):
    # d h_noisy / d h = 1 - lambda_ per neighbour, so the summed gradient is K * (1 - 1/4).
    monkeypatch.setattr(halo, "sample_lambda", fixed_lambda(0.25))
    h = torch.zeros(2, 3, 4, requires_grad=True)
    halo.perturb(h, "uniform", samples=2).sum().backward()

    assert torch.allclose(h.grad, torch.full((2, 3, 4), 1.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
@pytest.mark.parametrize("noise, settings", [
    ("uniform", dict(alpha=1.0, beta=19.0)),
    ("uniform", dict(alpha=0.05, beta=50.0)),  # lambda_ often rounds to 0
    ("atanh-gaussian", dict(sigma=1.0)),
    ("atanh-gaussian", dict(sigma=20.0)),  # tanh saturates to +-1.0
])
def test_perturb_bounded_strictly_inside(noise, settings, dtype):
    torch.manual_seed(0)
    h = torch.rand(7, 7, 7, dtype=dtype) * 2 - 1  # (B, T, C)
    h[0, 0] = 1.0
    h[0, 1] = -1.0
    h[1, :, :3] = torch.tensor([1.0, -1.0, 0.0], dtype=dtype)
    h_noisy = halo.perturb(h, noise, samples=7, **settings)

    assert h_noisy.dtype == dtype
    assert (h_noisy > -1).all()
    assert (h_noisy < 1).all()


def test_perturb_atanh_gaussian_noise_std():
    # atanh(h_noisy) - atanh(h) ~ N(0, sigma^2) away from saturation.
    torch.manual_seed(0)
    sigma = 0.5
    h = torch.rand(7, 7, 7, dtype=torch.float64) - 0.5
    h_noisy = halo.perturb(h, "atanh-gaussian", samples=7, sigma=sigma)
    noise = (torch.atanh(h_noisy) - torch.atanh(h)).flatten()
    n = noise.numel()

    assert abs(noise.mean().item()) < 4 * sigma / math.sqrt(n)
    assert abs(noise.std().item() - sigma) < 4 * sigma / math.sqrt(2 * n)


def test_perturb_gaussian_is_unbounded():
    torch.manual_seed(0)
    sigma = 2.0
    h = torch.zeros(7, 7, 7, dtype=torch.float64)
    noise = halo.perturb(h, "gaussian", samples=7, sigma=sigma).flatten()
    n = noise.numel()

    assert noise.abs().max().item() > 1
    assert abs(noise.std().item() - sigma) < 4 * sigma / math.sqrt(2 * n)


def test_perturb_unknown_noise_raises():
    with pytest.raises(ValueError, match="unknown Halo noise 'laplace'"):
        halo.perturb(torch.zeros(2, 2, 2), "laplace")


# Option checks


@pytest.mark.parametrize("noise, settings, message", [
    ("uniform", dict(alpha=0.0), "--halo-alpha must be > 0"),
    ("uniform", dict(alpha=-1.0), "--halo-alpha must be > 0"),
    ("uniform", dict(alpha=float("nan")), "--halo-alpha must be > 0"),
    ("uniform", dict(beta=0.0), "--halo-beta must be > 0"),
    ("uniform", dict(beta=-2.0), "--halo-beta must be > 0"),
    ("atanh-gaussian", dict(sigma=0.0), "--halo-sigma must be > 0"),
    ("gaussian", dict(sigma=-1.0), "--halo-sigma must be > 0"),
    ("uniform", dict(samples=0), "--halo-samples must be at least 1"),
    ("gaussian", dict(samples=-3), "--halo-samples must be at least 1"),
    ("laplace", dict(), "--halo-noise 'laplace' is invalid"),
])
def test_check_noise_options_rejects(noise, settings, message):
    options = dict(alpha=1.0, beta=19.0, sigma=1.0, samples=1)
    options.update(settings)

    with pytest.raises(ValueError, match=message):
        halo.check_noise_options(noise, **options)


@pytest.mark.parametrize("noise", ["uniform", "atanh-gaussian", "gaussian"])
def test_check_noise_options_accepts_defaults(noise):
    halo.check_noise_options(noise, alpha=1.0, beta=19.0, sigma=1.0, samples=7)


# One projection call for clean and noisy rows


def separate_joint_scores(logits, n_clean, target, noisy_index, members):
    """Compute what joint_log_probs returns with ordinary autograd operations."""
    clean_lprobs = F.log_softmax(logits[:n_clean], dim=-1)
    gold = clean_lprobs.gather(1, target.unsqueeze(1)).squeeze(1)
    total = clean_lprobs.sum(dim=1)
    noisy_lprobs = F.log_softmax(logits[n_clean:], dim=-1)
    if members is None:
        log_q = noisy_lprobs.gather(1, noisy_index.unsqueeze(1)).squeeze(1)
    else:
        log_q = torch.stack([noisy_lprobs[:, m].logsumexp(dim=1) for m in members], dim=1)
        log_q = log_q.gather(1, noisy_index.unsqueeze(1)).squeeze(1)
    return gold, total, log_q


@pytest.mark.parametrize("consume", [False, True])
@pytest.mark.parametrize("members", [MEMBERS, None], ids=["classes", "singleton"])
def test_joint_log_probs_match_separate_scores(members, consume):
    torch.manual_seed(0)
    logits = torch.randn(5 + 10, 7) * 3  # 5 clean rows, K = 2 neighbours of each
    target = torch.tensor([0, 6, 2, 5, 1])
    noisy_index = (target if members is None else torch.tensor([0, 2, 1, 1, 0])).repeat(2)
    weights = torch.randn(3, 15)

    def weighted_sum(scores):
        gold, total, log_q = scores
        return (weights[0, :5] * gold).sum() + (weights[1, :5] * total).sum() + (
            weights[2, 5:] * log_q).sum()

    joint_logits = logits.clone().requires_grad_(True)
    # A consumed buffer must be one that nothing else reads, as a layer's fresh output is.
    joint_input = joint_logits * 1.0 if consume else joint_logits
    joint = halo.joint_log_probs(joint_input, 5, target, noisy_index, members, consume=consume)
    weighted_sum(joint).backward()
    separate_logits = logits.clone().requires_grad_(True)
    separate = separate_joint_scores(separate_logits, 5, target, noisy_index, members)
    weighted_sum(separate).backward()

    for got, expected in zip(joint, separate):
        assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(joint_logits.grad, separate_logits.grad, atol=1e-5)


@pytest.mark.parametrize("members", [MEMBERS, None], ids=["classes", "singleton"])
@pytest.mark.parametrize("with_total", [True, False])
def test_joint_log_probs_gradcheck(members, with_total):
    torch.manual_seed(0)
    logits = torch.randn(3 + 6, 7, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([4, 0, 6])
    noisy_index = (target if members is None else torch.tensor([2, 0, 1])).repeat(2)

    def scores(x):
        return halo.joint_log_probs(x, 3, target, noisy_index, members, with_total)

    assert torch.autograd.gradcheck(scores, (logits,))


def test_joint_log_probs_without_total():
    logits = torch.randn(2 + 2, 7)
    target = torch.tensor([1, 3])
    _, total, _ = halo.joint_log_probs(logits, 2, target, torch.tensor([0, 1]), MEMBERS,
                                       with_total=False)

    assert total.eq(0).all()


def test_consumed_logits_take_gradient():
    logits = torch.randn(2 + 2, 7, requires_grad=True)
    scores = logits * 1.0
    gold, _, log_q = halo.joint_log_probs(scores, 2, torch.tensor([1, 3]), torch.tensor([0, 1]),
                                          MEMBERS, consume=True)
    (gold.sum() + log_q.sum()).backward(retain_graph=True)

    assert torch.equal(scores.detach(), logits.grad)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (gold.sum() + log_q.sum()).backward()
