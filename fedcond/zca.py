"""ZCA whitening, as used by the distillation literature (KIP, MTT, FRePo).

Fitted on the (already normalised) training split: ``x -> (x - mean) @ W`` with
``W = U diag(1 / sqrt(s + regularization)) U^T`` from the eigendecomposition of the pixel
covariance; ``regularization = 0.1`` is the literature's value. A set distilled in ZCA
space records ``zca: true`` and ``zca_regularization`` in its config, and evaluation applies
the same transform (fitted the same way on the same split) to the test images.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from fedcond.data import ImageDataset

# key -> (source tensor, whitened data set); holding the source keeps its id from being reused.
_CACHE: dict[tuple[int, float], tuple[torch.Tensor, ImageDataset]] = {}


def fit_zca(images: torch.Tensor, regularization: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), whitening matrix (D, D)) fitted on ``images`` (N, C, H, W)."""
    x = images.flatten(1).double()
    mean = x.mean(dim=0)
    x = x - mean
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    w = eigvecs @ torch.diag(torch.rsqrt(eigvals.clamp_min(0) + regularization)) @ eigvecs.T
    return mean.float(), w.float()


def apply_zca(images: torch.Tensor, mean: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Whiten ``images`` (N, C, H, W) with a fitted (mean, matrix)."""
    flat = (images.flatten(1) - mean.to(images.device)) @ matrix.to(images.device)
    return flat.view_as(images).contiguous()


def zca_dataset(dataset: ImageDataset, regularization: float = 0.1) -> ImageDataset:
    """``dataset`` with both splits whitened by ZCA fitted on its training split (cached)."""
    key = (id(dataset.train_images), float(regularization))
    if key in _CACHE:
        return _CACHE[key][1]
    mean, matrix = fit_zca(dataset.train_images, regularization)
    result = replace(
        dataset,
        train_images=apply_zca(dataset.train_images, mean, matrix),
        test_images=apply_zca(dataset.test_images, mean, matrix),
    )
    _CACHE.clear()  # keep one entry: whitened copies of large data sets are big
    _CACHE[key] = (dataset.train_images, result)
    return result


def zca_regularization(config: dict[str, Any]) -> float | None:
    """The ZCA regularisation a synthetic set's config asks for, or None if it used none.

    Accepts ``{"zca": true, "zca_regularization": r}`` (iterative configs) and
    ``{"zca": {"regularization": r}}``.
    """
    value = config.get("zca")
    if isinstance(value, dict):
        return float(value.get("regularization", 0.1))
    if value:
        return float(config.get("zca_regularization", 0.1))
    return None
