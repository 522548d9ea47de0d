"""The Halo term as pure tensor functions (Mei, Zhang, Duh and Van Durme, *SEM 2018).

For a decoder state ``h`` in (-1, 1)^C at one target position, Halo draws a neighbour

    h_uniform ~ Uniform(-1, 1)^C          (the paper's h'')
    lambda_   ~ Beta(alpha, beta)         (one draw per position and neighbour)
    h_noisy   = h + lambda_ * (h_uniform - h)

feeds ``h_noisy`` through the model's own output layer and sums the resulting probabilities
over each class of a partition of the vocabulary into ``q`` (by default: predicate tokens and
argument tokens). The training loss adds ``-log q[class of the gold token]``. The functions here
take and return plain tensors, so they can be tested without a model.
"""

from typing import Callable, List, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

NOISE_CHOICES = ("uniform", "atanh-gaussian", "gaussian")
BOUNDED_NOISES = ("uniform", "atanh-gaussian")


def open_bound(dtype: torch.dtype) -> float:
    """Return the largest value below 1 that the Halo recipes let a bounded state reach.

    tanh saturates to exactly +-1.0 in floating point, so bounded states are clamped to
    ``[-open_bound, open_bound]`` to keep them inside the open cube (-1, 1)^C.
    """
    return 1.0 - torch.finfo(dtype).eps


def check_noise_options(noise: str, alpha: float, beta: float, sigma: float, samples: int) -> None:
    """Raise ValueError, naming the flag and the fix, for Halo noise settings that cannot work."""
    if noise not in NOISE_CHOICES:
        raise ValueError(
            f"--halo-noise {noise!r} is invalid; choose one of {', '.join(NOISE_CHOICES)}"
        )
    if noise == "uniform":
        if not alpha > 0:
            raise ValueError(f"--halo-alpha must be > 0 for the Beta distribution, got {alpha}")
        if not beta > 0:
            raise ValueError(f"--halo-beta must be > 0 for the Beta distribution, got {beta}")
    elif not sigma > 0:
        raise ValueError(f"--halo-sigma must be > 0 for --halo-noise {noise}, got {sigma}")
    if samples < 1:
        raise ValueError(f"--halo-samples must be at least 1, got {samples}")


def sample_lambda(shape: Tuple[int, ...], alpha: float, beta: float, like: torch.Tensor):
    """Draw interpolation weights ``lambda_ ~ Beta(alpha, beta)``.

    Returns:
        A tensor of ``shape`` with the dtype and device of ``like``, values in [0, 1].
    """
    concentration1 = torch.full(shape, float(alpha), dtype=torch.float32, device=like.device)
    concentration0 = torch.full(shape, float(beta), dtype=torch.float32, device=like.device)
    # check_noise_options has validated alpha and beta. torch's own check of the tensors would
    # read them on the host, which costs a device sync at every draw.
    beta_distribution = torch.distributions.Beta(concentration1, concentration0,
                                                 validate_args=False)
    return beta_distribution.sample().to(like.dtype)


def perturb(
    h: torch.Tensor, noise: str = "uniform", samples: int = 1, alpha: float = 1.0,
    beta: float = 19.0, sigma: float = 1.0,
) -> torch.Tensor:
    """Draw ``samples`` noisy neighbours of every state.

    Args:
        h: ``(B, T, C)`` float decoder states; in [-1, 1] for the bounded recipes.
        noise: ``uniform`` (interpolate towards a uniform draw with a Beta weight),
            ``atanh-gaussian`` (add Gaussian noise of std ``sigma`` in atanh space, map back
            with tanh) or ``gaussian`` (add Gaussian noise of std ``sigma`` to ``h``).
        samples: K, the number of neighbours per state.

    Returns:
        ``(K, B, T, C)`` h_noisy, strictly inside (-1, 1) for the bounded recipes. No gradient
        flows into the noise itself; the gradient with respect to ``h`` does flow.
    """
    shape = (samples,) + tuple(h.shape)
    if noise == "uniform":
        bound = open_bound(h.dtype)
        h_uniform = torch.empty(shape, dtype=h.dtype, device=h.device).uniform_(-bound, bound)
        lambda_ = sample_lambda(shape[:-1] + (1,), alpha, beta, h)  # (K, B, T, 1)
        h_noisy = h.unsqueeze(0) + lambda_ * (h_uniform - h.unsqueeze(0))
        return h_noisy.clamp(-bound, bound)
    if noise == "atanh-gaussian":
        bound = open_bound(h.dtype)
        z = torch.atanh(h.clamp(-bound, bound)).unsqueeze(0)  # (1, B, T, C), finite
        z_noisy = z + sigma * torch.randn(shape, dtype=h.dtype, device=h.device)
        return torch.tanh(z_noisy).clamp(-bound, bound)
    if noise == "gaussian":
        return h.unsqueeze(0) + sigma * torch.randn(shape, dtype=h.dtype, device=h.device)
    raise ValueError(f"unknown Halo noise {noise!r}; choose one of {', '.join(NOISE_CHOICES)}")


def perturb_dims(
    h: torch.Tensor, dims: slice, noise: str = "uniform", samples: int = 1, alpha: float = 1.0,
    beta: float = 19.0, sigma: float = 1.0,
) -> torch.Tensor:
    """Draw neighbours that differ from ``h`` only in the feature dims ``dims``.

    Some decoders' features contain more than the state Halo is about, such as the selective
    decoder's tag selector input beside its candidate states. Only ``h[..., dims]`` is perturbed,
    as in :func:`perturb`, and every other feature is copied unchanged.

    Args:
        h: ``(B, T, C)`` float features.
        dims: a slice of ``range(C)`` with step 1.

    Returns:
        ``(K, B, T, C)`` h_noisy.
    """
    start, stop, step = dims.indices(h.size(-1))
    assert step == 1, "Halo perturbs a contiguous range of feature dims"
    if (start, stop) == (0, h.size(-1)):
        return perturb(h, noise, samples, alpha, beta, sigma)
    noisy = perturb(h[..., start:stop], noise, samples, alpha, beta, sigma)  # (K, B, T, C')
    clean = h.unsqueeze(0).expand((samples,) + tuple(h.shape))  # (K, B, T, C)
    return torch.cat([clean[..., :start], noisy, clean[..., stop:]], dim=-1)  # (K, B, T, C)


def _class_mass_forward(scores, column_class, num_classes, from_logits):
    """Compute the per-class logsumexp of ``(N, V)`` scores, keeping what the backward needs.

    As in logsumexp, each class is shifted by its own largest entry, so its shifted mass is at
    least 1 and classes with tiny mass stay finite. With ``from_logits`` the result is normalized
    by the logsumexp of the whole row, which follows from the class sums, so no log-softmax over
    the vocabulary is needed.

    Args:
        scores: ``(N, V)`` float scores.
        column_class: ``(V,)`` int64 class of each column, ``num_classes`` for none.

    Returns:
        ``(log_q, saved)``: ``(N, num_classes)`` log q and the tensors
        :func:`_class_mass_backward` takes.
    """
    index = column_class.expand_as(scores)  # (N, V)
    shift = scores.new_full((scores.size(0), num_classes + 1), float("-inf"))
    shift.scatter_reduce_(1, index, scores, "amax")  # (N, n + 1), largest entry per class
    shift.masked_fill_(shift.isinf(), 0.0)  # as logsumexp: an all -inf class gives -inf
    shifted = shift.index_select(1, column_class)  # (N, V)
    torch.sub(scores, shifted, out=shifted).exp_()  # in [0, 1]
    classes = torch.arange(num_classes + 1, device=scores.device)
    one_hot = (column_class.unsqueeze(1) == classes).to(scores.dtype)  # (V, n + 1)
    # A matrix product sums about as accurately as logsumexp. scatter_add_ sums in sequence
    # and loses about ten times more precision.
    # NOTE: where TF32 matmuls are enabled on GPU, this product rounds its inputs to TF32.
    mass = shifted @ one_hot  # (N, n + 1), the last column for tokens in no class
    log_mass = mass.log() + shift  # (N, n + 1)
    total = torch.logsumexp(log_mass, dim=1, keepdim=True) if from_logits else None  # (N, 1)
    log_q = log_mass[:, :num_classes] - total if from_logits else log_mass[:, :num_classes]
    return log_q, (shifted, mass, column_class, shift, total)


def _class_mass_weight(grad, mass, shift, total):
    """Return the ``(N, n + 1)`` factor of each class in the gradient of the class log mass.

    The gradient with respect to a score is that factor of the score's class times the score's
    shifted probability, ``exp(score - shift of its class)``.
    """
    n = grad.size(1)
    weight = grad.new_zeros(mass.shape)  # (N, n + 1), 0 for tokens in no class
    weight[:, :n] = grad / mass[:, :n]
    if total is not None:
        # The normalizer takes each column's softmax probability, shifted * exp(shift - total).
        weight -= grad.sum(dim=1, keepdim=True) * (shift - total).exp()
    return weight


def _class_mass_backward(grad, saved, out=None):
    """Return the gradient of :func:`_class_mass_forward`'s scores, written into ``out``.

    Args:
        grad: ``(N, n)`` gradient of log q.
        saved: the tensors :func:`_class_mass_forward` returned.
        out: an optional ``(N, V)`` contiguous buffer for the result.
    """
    shifted, mass, column_class, shift, total = saved
    weight = _class_mass_weight(grad, mass, shift, total)
    if out is None:
        out = weight.index_select(1, column_class)
    else:
        torch.index_select(weight, 1, column_class, out=out)
    return out.mul_(shifted)  # (N, V)


class _ClassLogMass(torch.autograd.Function):
    """Per-class logsumexp of ``(N, V)`` scores, with the backward pass written out.

    The forward and the backward pass allocate one ``(N, V)`` buffer each, where autograd
    through the same operations allocates five in all. On CPU, faulting in the pages of a fresh
    buffer can cost as much as the arithmetic on it.
    """

    @staticmethod
    def forward(ctx, scores, column_class, num_classes, from_logits):
        log_q, saved = _class_mass_forward(scores, column_class, num_classes, from_logits)
        ctx.save_for_backward(*saved)
        return log_q

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return _class_mass_backward(grad, ctx.saved_tensors), None, None, None


class _JointLogProbs(torch.autograd.Function):
    """The clean and the noisy rows of one output-layer call, scored in one pass.

    The first ``N`` rows of the ``(R, V)`` logits come from the clean states, the other
    ``M = R - N`` from their noisy neighbours. From each clean row the forward pass returns the
    log-probability of the gold token and, with ``with_total``, the sum of all log-probabilities,
    which label smoothing needs. From each noisy row it returns log q of the gold token's class,
    which for the singleton partition is the gold token's own probability.

    The forward pass keeps the logits, the shifted class probabilities of the noisy rows and a
    few numbers per row. The backward pass recomputes the clean rows' probabilities from the
    logits and writes the gradient of all rows into one ``(R, V)`` buffer, which with
    ``consume`` is the logits tensor itself, so it allocates no buffer of that size. Autograd
    through the same operations would hold several and concatenate two gradients.
    """

    @staticmethod
    def forward(ctx, logits, n_clean, target, noisy_index, column_class, num_classes,
                with_total, consume):
        # logits (R, V); target (N,) gold ids; noisy_index (M,) the gold class of each noisy row
        # (the gold id for the singleton partition, column_class None).
        clean, noisy = logits[:n_clean], logits[n_clean:]
        gold, clean_norm = _log_prob_at(clean, target)  # (N,), (N,)
        if with_total:
            total = clean.sum(dim=1) - logits.size(1) * clean_norm  # (N,)
        else:
            total = gold.new_zeros(gold.shape)
        if column_class is None:
            log_q, noisy_norm = _log_prob_at(noisy, noisy_index)  # (M,), (M,)
            saved = (noisy_norm,)
        else:
            class_log_q, saved = _class_mass_forward(noisy, column_class, num_classes, True)
            log_q = class_log_q.gather(1, noisy_index.unsqueeze(1)).squeeze(1)  # (M,)
        ctx.num_classes, ctx.with_total, ctx.consume = num_classes, with_total, consume
        ctx.singleton = column_class is None
        ctx.save_for_backward(logits, clean_norm, target, noisy_index, *saved)
        return gold, total, log_q

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_gold, grad_total, grad_log_q):
        logits, clean_norm, target, noisy_index, *saved = ctx.saved_tensors
        # Consumed logits take the gradient in place. A second backward pass then fails in
        # autograd's check of saved tensors, since the logits have changed.
        grad = logits if ctx.consume else torch.empty_like(logits)  # (R, V)
        N = clean_norm.numel()
        _log_prob_at_backward(logits[:N], clean_norm, target, grad_gold, grad[:N],
                              grad_total if ctx.with_total else None)
        if ctx.singleton:
            (noisy_norm,) = saved
            _log_prob_at_backward(logits[N:], noisy_norm, noisy_index, grad_log_q, grad[N:])
        else:
            class_grad = grad_log_q.new_zeros((noisy_index.numel(), ctx.num_classes))  # (M, n)
            class_grad.scatter_(1, noisy_index.unsqueeze(1), grad_log_q.unsqueeze(1))
            _class_mass_backward(class_grad, saved, out=grad[N:])
        return grad, None, None, None, None, None, None, None


def _log_prob_at(scores, index):
    """Return each row's log-softmax at ``index`` and the row's logsumexp, both ``(N,)``."""
    norm = torch.logsumexp(scores, dim=1)  # (N,)
    return scores.gather(1, index.unsqueeze(1)).squeeze(1) - norm, norm


def _log_prob_at_backward(scores, norm, index, grad, out, grad_total=None):
    """Write the gradient of :func:`_log_prob_at` into the ``(N, V)`` buffer ``out``.

    With ``grad_total``, the gradient of the sum of each row's log-probabilities is added:
    d log p_y / dz_v = [v = y] - p_v and d sum_u log p_u / dz_v = 1 - V p_v.
    """
    probs = torch.sub(scores, norm.unsqueeze(1), out=out).exp_()  # (N, V)
    if grad_total is None:
        probs.mul_(-grad.unsqueeze(1))
    else:
        probs.mul_(-(grad + scores.size(1) * grad_total).unsqueeze(1))
        probs.add_(grad_total.unsqueeze(1))
    return probs.scatter_add_(1, index.unsqueeze(1), grad.unsqueeze(1))


def joint_log_probs(
    logits: torch.Tensor, n_clean: int, target: torch.Tensor, noisy_gold_class: torch.Tensor,
    members: Optional[List[torch.Tensor]], with_total: bool = True, consume: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score the clean and the noisy rows of one projection call.

    Args:
        logits: ``(R, V)`` float32 contiguous unnormalized scores whose log-softmax is the
            model's distribution; the first ``n_clean`` rows come from the clean states.
        target: ``(n_clean,)`` int64 gold ids of the clean rows.
        noisy_gold_class: ``(R - n_clean,)`` int64 class of the gold token of each noisy row,
            or the gold id itself for the singleton partition. Rows whose gold token has no
            class need some valid class here, and the caller masks them out.
        members: class members as in :func:`class_log_mass`; None for the singleton partition.
        with_total: compute ``total``; without it, ``total`` is zeros and takes no gradient.
        consume: let the backward pass overwrite ``logits`` with their gradient, which saves
            a buffer of their size. Only for logits that nothing reads after the backward pass
            (such as the fresh output of a linear layer) and that take one backward pass.

    Returns:
        ``(gold, total, log_q)``: ``(n_clean,)`` log-probability of the gold token and
        ``(n_clean,)`` sum of all log-probabilities of each clean row, and ``(R - n_clean,)``
        log q of the gold token's class at each noisy row.
    """
    if members is None:
        column_class, n = None, 0
    else:
        column_class, n = column_classes(members, logits.size(1), logits.device), len(members)
    return _JointLogProbs.apply(
        logits, n_clean, target, noisy_gold_class, column_class, n, with_total, consume
    )


def column_classes(members: List[torch.Tensor], V: int, device) -> torch.Tensor:
    """Return the ``(V,)`` int64 class of each vocabulary index, ``len(members)`` for none."""
    n = len(members)
    column_class = torch.full((V,), n, dtype=torch.long, device=device)
    for c, index in enumerate(members):
        column_class.index_fill_(0, index, c)
    return column_class


def class_log_mass(
    lprobs: torch.Tensor, members: List[torch.Tensor], from_logits: bool = False,
) -> torch.Tensor:
    """Sum the probability of each class in log space: ``log q``.

    Args:
        lprobs: ``(..., V)`` float32 log-probabilities over the vocabulary, or with
            ``from_logits`` the unnormalized scores whose log-softmax they are.
        members: for each of the ``n`` classes, an int64 tensor of its vocabulary indices
            (disjoint, each non-empty).
        from_logits: normalize over the vocabulary here, which costs less than a separate
            log-softmax.

    Returns:
        ``(..., n)`` float32 log q, computed as logsumexp over each class's columns so
        that classes with tiny mass stay finite.
    """
    V, n = lprobs.size(-1), len(members)
    column_class = column_classes(members, V, lprobs.device)
    log_q = _ClassLogMass.apply(lprobs.reshape(-1, V), column_class, n, from_logits)  # (N, n)
    return log_q.view(lprobs.shape[:-1] + (n,))


def gold_class_log_mass(
    lprobs: torch.Tensor, gold_class: torch.Tensor, members: Optional[List[torch.Tensor]],
    singleton_ids: Optional[torch.Tensor] = None, from_logits: bool = False,
) -> torch.Tensor:
    """Return ``log q[class of the gold token]`` at every position.

    Args:
        lprobs: ``(K, B, T, V)`` float32 log-probabilities of the noisy states, or their
            logits with ``from_logits``.
        gold_class: ``(B, T)`` int64 class of each gold token, -1 for none.
        members: class members as in :func:`class_log_mass`; None for the singleton partition.
        singleton_ids: for the singleton partition, ``(B, T)`` int64 gold token ids, whose
            own probability is q.
        from_logits: as in :func:`class_log_mass`.

    Returns:
        ``(K, B, T)`` float32; positions whose gold token has no class hold an arbitrary finite
        value and must be masked by the caller.
    """
    if members is None:
        index = singleton_ids.unsqueeze(0).unsqueeze(-1).expand(lprobs.size(0), -1, -1, 1)
        log_q = lprobs.gather(-1, index).squeeze(-1)  # (K, B, T)
        return log_q - torch.logsumexp(lprobs, dim=-1) if from_logits else log_q
    log_q = class_log_mass(lprobs, members, from_logits)  # (K, B, T, n)
    index = gold_class.clamp(min=0).unsqueeze(0).unsqueeze(-1).expand(lprobs.size(0), -1, -1, 1)
    return log_q.gather(-1, index).squeeze(-1)  # (K, B, T)


def halo_positions(
    lprobs: torch.Tensor, gold_class: torch.Tensor, mask: torch.Tensor,
    members: Optional[List[torch.Tensor]], target: Optional[torch.Tensor] = None,
    from_logits: bool = False,
) -> torch.Tensor:
    """Compute ``-mean_k log q_k[class of the gold token]`` at every position.

    Args:
        lprobs: ``(K, B, T, V)`` float32 log-probabilities of the K noisy neighbours, or their
            logits with ``from_logits`` (see :func:`class_log_mass`).
        gold_class: ``(B, T)`` int64 class of each gold token, -1 for none.
        mask: ``(B, T)`` bool, True where the term applies (not padding, gold token classed).
        members: class members as in :func:`class_log_mass`; None for the singleton partition,
            which then needs ``target``, the ``(B, T)`` int64 gold ids.

    Returns:
        ``(B, T)`` float32, exactly 0 at positions outside ``mask``, so a batch without any
        classed token adds nothing and stays finite.
    """
    log_q = gold_class_log_mass(lprobs, gold_class, members, target, from_logits)  # (K, B, T)
    return masked_term(log_q, mask)


def masked_term(log_q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return ``-mean_k log_q[k]`` where ``mask`` is True and exactly 0 elsewhere.

    Args:
        log_q: ``(K, B, T)`` log q of the gold token's class for each neighbour.
        mask: ``(B, T)`` bool.

    Returns:
        ``(B, T)`` float32.
    """
    # torch.where keeps masked positions out even if their log q is -inf there.
    log_q = torch.where(mask.unsqueeze(0), log_q, torch.zeros_like(log_q))
    return -log_q.mean(dim=0)  # (B, T)


def halo_term(
    lprobs: torch.Tensor, gold_class: torch.Tensor, mask: torch.Tensor,
    members: Optional[List[torch.Tensor]], target: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sum :func:`halo_positions` over the batch: a float32 scalar, 0 when nothing is masked in."""
    return halo_positions(lprobs, gold_class, mask, members, target).sum()


def chunked_halo_positions(
    h_noisy: torch.Tensor, gold_class: torch.Tensor, mask: torch.Tensor,
    log_probs_fn: Callable[[torch.Tensor], torch.Tensor],
    members: Optional[List[torch.Tensor]], target: Optional[torch.Tensor], chunk_size: int,
    from_logits: bool = False,
) -> torch.Tensor:
    """Compute :func:`halo_positions` over chunks of ``chunk_size`` target positions.

    Each chunk projects its K neighbours in one call and is recomputed in the backward pass
    (activation checkpointing), so the extra memory stays within one chunk's logits.

    Args:
        h_noisy: ``(K, B, T, C)`` noisy states.
        log_probs_fn: maps ``(N, T', C)`` states to ``(N, T', V)`` float32 log-probabilities
            through the model's output layer, or to logits with ``from_logits``; it must act
            on each position independently.

    Returns:
        ``(B, T)`` float32 as :func:`halo_positions`.
    """
    from torch.utils.checkpoint import checkpoint

    K, B, T, C = h_noisy.shape
    flat_noisy = h_noisy.reshape(K, 1, B * T, C)  # (K, 1, B*T, C)
    flat_gold = gold_class.reshape(1, B * T)
    flat_mask = mask.reshape(1, B * T)
    flat_target = target.reshape(1, B * T) if target is not None else None

    def chunk_positions(noisy_part, gold_part, mask_part, target_part):
        lprobs = log_probs_fn(noisy_part.reshape(K, -1, C)).unsqueeze(1)  # (K, 1, n, V)
        return halo_positions(
            lprobs, gold_part, mask_part, members, target_part, from_logits
        )  # (1, n)

    parts = []
    for start in range(0, B * T, chunk_size):
        part = slice(start, start + chunk_size)
        target_part = flat_target[:, part] if flat_target is not None else None
        parts.append(checkpoint(
            chunk_positions, flat_noisy[:, :, part], flat_gold[:, part], flat_mask[:, part],
            target_part, use_reentrant=False,
        ))
    return torch.cat(parts, dim=1).view(B, T)  # (B, T)


def chunked_halo_term(h_noisy, gold_class, mask, log_probs_fn, members, target, chunk_size):
    """Sum :func:`chunked_halo_positions` over the batch (a float32 scalar)."""
    return chunked_halo_positions(
        h_noisy, gold_class, mask, log_probs_fn, members, target, chunk_size
    ).sum()


def beta_moments(alpha: float, beta: float) -> Tuple[float, float]:
    """Return the mean and variance of Beta(alpha, beta)."""
    total = alpha + beta
    return alpha / total, alpha * beta / (total * total * (total + 1))
