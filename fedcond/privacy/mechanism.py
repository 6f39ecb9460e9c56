"""The Gaussian mechanism on per-class sums of clipped per-example vectors.

DP-DM releases, per class, the sum over that class's examples of a bounded vector
``u(x) = [clip(embedding(x)), count_weight * clip_norm]`` — the clipped embedding, plus a
constant coordinate whose noisy sum gives the class's (noisy) size. Each example
contributes to one class only and ``||u(x)|| <= clip_norm * sqrt(1 + count_weight**2)``,
so adding or removing one example moves the whole released matrix (all classes) by at
most that much in L2: that is the sensitivity, and Gaussian noise of std
``noise_multiplier * sensitivity`` on every entry makes the release
(ε, δ)-DP as :mod:`fedcond.privacy.accounting` certifies. The noisy class size is released
by the same mechanism, so dividing by it (to get a mean) is post-processing and costs no
privacy.

Pure functions over tensors; the noise comes from a :class:`~fedcond.privacy.noise.SecretNoise`
(operating-system entropy, never written anywhere). Replace-one adjacency (one example
swapped for another) is :func:`replace_sensitivity`: the same mechanism with a larger
sensitivity, see :func:`fedcond.privacy.accounting.replace_one_spend`.
"""

from __future__ import annotations

import math

import torch

from fedcond.privacy.noise import SecretNoise


def clip_rows(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Each row of ``x`` (N, D) scaled down to L2 norm at most ``max_norm`` (rows already
    shorter are unchanged): ``x_i * min(1, max_norm / ||x_i||)``. Differentiable."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    norms = x.norm(dim=1, keepdim=True)
    return x * torch.clamp(max_norm / norms.clamp_min(1e-12), max=1.0)


def sensitivity(clip_norm: float, count_weight: float) -> float:
    """L2 sensitivity of :func:`class_sums` under adding or removing one example."""
    return clip_norm * math.sqrt(1.0 + count_weight**2)


def replace_sensitivity(clip_norm: float, count_weight: float) -> float:
    """L2 sensitivity of :func:`class_sums` under replacing one example by another: within
    one class the count coordinates cancel and the clipped embeddings differ by up to
    ``2 * clip_norm``; across two classes two rows change, by ``sensitivity`` each."""
    return clip_norm * max(2.0, math.sqrt(2.0 * (1.0 + count_weight**2)))


def class_sums(features: torch.Tensor, labels: torch.Tensor, num_classes: int, clip_norm: float,
               count_weight: float) -> torch.Tensor:
    """(num_classes, D + 1) per-class sums of ``[clip_rows(features), count_weight * clip_norm]``.

    Args:
        features: (N, D) per-example vectors (e.g. embeddings), one row per example.
        labels: (N,) class ids in ``[0, num_classes)``.
        clip_norm: bound on each example's feature norm.
        count_weight: the count coordinate's value, in units of ``clip_norm``.
    """
    clipped = clip_rows(features, clip_norm)
    u = torch.cat([clipped, torch.full((clipped.shape[0], 1), count_weight * clip_norm, dtype=clipped.dtype,
                                       device=clipped.device)], dim=1)
    out = torch.zeros(num_classes, u.shape[1], dtype=u.dtype, device=u.device)
    return out.index_add_(0, labels.to(u.device), u)


def add_noise(sums: torch.Tensor, noise_multiplier: float, sens: float, noise: SecretNoise) -> torch.Tensor:
    """``sums`` + N(0, (noise_multiplier * sens)^2) on every entry, drawn from ``noise``: added
    in float64 and rounded to float32 (see :mod:`fedcond.privacy.noise` on floating point),
    returned on ``sums``' device."""
    noisy = sums.detach().double().cpu() + noise.gaussian(tuple(sums.shape), noise_multiplier * sens)
    return noisy.float().to(sums.device)


def noisy_means(noisy: torch.Tensor, clip_norm: float, count_weight: float, min_count: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-processing of a noisy :func:`class_sums` release: (per-class mean features
    (K, D), noisy class sizes (K,)). Sizes are floored at ``min_count`` so a class with
    few or no examples does not divide by a tiny or negative number."""
    counts = noisy[:, -1] / (count_weight * clip_norm)
    means = noisy[:, :-1] / counts.clamp_min(min_count).unsqueeze(1)
    return means, counts
