"""One loaded copy of a data set per process, shared by every client and the server there.

In simulation a Ray actor (or the in-process server thread) serves many clients; loading
MNIST or CIFAR-10 for each message would dominate the run, so loads are memoised by
(name, data_dir, normalize). The tensors are never modified in place, so sharing is safe.

A federated run holds out a validation split before anything is partitioned
(:func:`validation_indices`: ``val_fraction`` of every class, drawn with the run's seed).
:func:`federated_data` is the data set the run sees — its train split without those images,
so clients, references and the upper bound never train on them — and
:func:`federated_validation` the held-out images on which every choice is made (the round a
run is reported at, a grid's winner, the upper bound's plateau). The test split only
measures. A reduced run (``train_per_class`` > 0, e.g. CIFAR-10 on a CPU) then keeps a seeded
per-class subsample of what remains of the train split; validation and test are as in a full run.
"""

from __future__ import annotations

import functools

import torch

from fedcond.data import ImageDataset, load_dataset
from fedcond.federated.config import AppConfig


@functools.lru_cache(maxsize=4)
def get_dataset(name: str, data_dir: str = "", normalize: str = "") -> ImageDataset:
    """``load_dataset(name, data_dir or None, normalize=normalize or None)`` on the CPU, memoised per process."""
    return load_dataset(name, data_dir=data_dir or None, device="cpu", normalize=normalize or None)


def validation_indices(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of ``fraction`` of every class (at least one image of a class with two or
    more), drawn with ``seed``: the same in every process."""
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    picked = []
    for c in range(int(labels.max()) + 1 if labels.numel() else 0):
        idx = (labels == c).nonzero().flatten()
        take = min(idx.numel() - 1, max(1, round(fraction * idx.numel())))
        if take > 0:
            picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:take]])
    return torch.sort(torch.cat(picked)).values if picked else torch.zeros(0, dtype=torch.long)


def train_subset_indices(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``per_class`` images of every class (all of a class that has fewer),
    drawn with a generator seeded from (``seed``, ``per_class``) alone: the same subset in every
    process (Ray's workers load the data themselves), whatever ran before."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + per_class * 31 + 7)
    picked = []
    for c in range(int(labels.max()) + 1 if labels.numel() else 0):
        idx = (labels == c).nonzero().flatten()
        picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    return torch.sort(torch.cat(picked)).values if picked else torch.zeros(0, dtype=torch.long)


@functools.lru_cache(maxsize=4)
def _split(name: str, data_dir: str, normalize: str, fraction: float, seed: int,
           per_class: int = 0) -> tuple[ImageDataset, ImageDataset]:
    data = get_dataset(name, data_dir, normalize)
    val = validation_indices(data.train_labels, fraction, seed)
    keep = torch.ones(data.train_labels.shape[0], dtype=torch.bool)
    keep[val] = False
    train = data.subset(keep.nonzero().flatten(), name=data.name)
    if per_class > 0:  # a reduced run (train_per_class): drawn after the validation split, never from it
        train = train.subset(train_subset_indices(train.train_labels, per_class, seed), name=data.name)
    held = data.subset(val, name=data.name)
    return train, held


def federated_data(cfg: AppConfig) -> ImageDataset:
    """The run's data set: the train split without the validation images (with ``train_per_class``
    > 0 only that many of each class, :func:`train_subset_indices`), and the whole test split."""
    return _split(cfg.dataset, cfg.data_dir, cfg.normalize, cfg.val_fraction, cfg.seed, cfg.train_per_class)[0]


def federated_validation(cfg: AppConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's validation images and labels (held out of the train split before partitioning)."""
    held = _split(cfg.dataset, cfg.data_dir, cfg.normalize, cfg.val_fraction, cfg.seed)[1]
    return held.train_images, held.train_labels
