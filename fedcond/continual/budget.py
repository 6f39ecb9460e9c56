"""The buffer's memory budget as pure rules: per-class quotas and sub-selection.

A buffer of ``mem_size`` images is split evenly among the classes seen so far; the
remainder goes, one image each, to the classes that sort first, so the split is a pure
function of (budget, classes) and every run with the same classes makes the same one.
When new classes arrive, old classes shrink to their new quota by keeping the images
that best summarise them (herding in pixel space: the running mean of the kept images
stays closest to the mean of all of them), so the survivor of a class is its most
"central" synthetic image rather than an arbitrary one.
"""

from __future__ import annotations

from typing import Hashable, Iterable, TypeVar

import torch

from fedcond.distill.coreset import herding_select

K = TypeVar("K", bound=Hashable)


def class_quotas(mem_size: int, classes: Iterable[K]) -> dict[K, int]:
    """Images allowed per class: ``mem_size // n`` each, remainder to the first classes.

    Classes are sorted first so the remainder does not depend on arrival order. With more
    classes than images, the last classes get a quota of 0 (they are then not stored).

    >>> class_quotas(10, [3, 1, 2])
    {1: 4, 2: 3, 3: 3}
    """
    if mem_size < 0:
        raise ValueError(f"mem_size must be >= 0, got {mem_size}")
    ordered = sorted(set(classes))
    if not ordered:
        return {}
    base, rem = divmod(mem_size, len(ordered))
    return {c: base + (1 if i < rem else 0) for i, c in enumerate(ordered)}


def herding_order(images: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``min(k, n)`` rows of ``images`` picked greedily by herding (pixel space).

    At step t the row that brings the mean of the t picked rows closest to the mean of all
    rows is added. Deterministic (ties go to the lowest index).
    """
    n = images.shape[0]
    k = max(0, min(k, n))
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    # The coreset rule itself; float64 so near-equal images still order deterministically.
    return herding_select(images.detach().reshape(n, -1).double(), k)

def subselect(images: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``k`` of one class's images (and their label rows) chosen by :func:`herding_order`."""
    if images.shape[0] <= k:
        return images, labels
    idx = herding_order(images, k)
    return images[idx], labels[idx]
