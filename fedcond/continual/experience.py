"""From an Avalanche experience to the tensors and ``ImageDataset`` a distiller takes.

Distillers work on resident tensors (see ``fedcond.data``), so an experience's dataset is
read once, in its *eval* view (no training augmentation: the buffer should summarise the
data, not one random augmentation of it), into (images, labels, task labels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from fedcond.data import ImageDataset
from fedcond.errors import FedcondError


def experience_tensors(dataset: Any, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All items of an Avalanche dataset as (images float32, labels int64, task labels int64)."""
    view = dataset.eval() if hasattr(dataset, "eval") else dataset
    xs, ys, ts = [], [], []
    for batch in DataLoader(view, batch_size=batch_size, shuffle=False, collate_fn=getattr(view, "collate_fn", None)):
        x, y = batch[0], batch[1]
        t = batch[2] if len(batch) > 2 else torch.zeros(len(y), dtype=torch.long)
        xs.append(torch.as_tensor(x).float())
        ys.append(torch.as_tensor(y).long())
        ts.append(torch.as_tensor(t).long())
    if not xs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    x = torch.cat(xs)
    if x.dim() != 4:
        raise FedcondError(
            f"distilled replay needs image tensors (N, C, H, W); the experience gives shape {tuple(x.shape)}"
        )
    return x, torch.cat(ys), torch.cat(ts)


def num_classes_of(exp: Any, labels: torch.Tensor, given: int | None) -> int:
    """Classes in the whole stream: ``given``, else the benchmark's ``n_classes``, else max label + 1."""
    if given is not None:
        return given
    benchmark = getattr(exp, "benchmark", None) or getattr(getattr(exp, "origin_stream", None), "benchmark", None)
    n = getattr(benchmark, "n_classes", None)
    if isinstance(n, int) and n > 0:
        return max(n, int(labels.max()) + 1)
    return int(labels.max()) + 1


def experience_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    name: str = "experience",
) -> ImageDataset:
    """An ImageDataset whose training split is one experience's data.

    ``classes`` names every class of the stream, so class ids keep their meaning and the
    distiller sees the absent classes as simply empty. The test split is a one-image
    placeholder: nothing in distillation reads it.
    """
    c = images.shape[1]
    return ImageDataset(
        name=name,
        train_images=images.float().contiguous(),
        train_labels=labels.long(),
        test_images=images[:1].float(),
        test_labels=labels[:1].long(),
        classes=tuple(str(i) for i in range(num_classes)),
        mean=tuple(mean) if mean else (0.0,) * c,
        std=tuple(std) if std else (1.0,) * c,
    )
