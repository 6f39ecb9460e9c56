"""Class-incremental benchmarks built with Avalanche's own generator over fedcond's data.

``nc_benchmark`` (Avalanche) splits a data set into experiences of disjoint classes; the
data comes from :func:`fedcond.data.load_dataset`, so ``split-digits`` works offline and
the others read a local mirror (``data_dir``) instead of Avalanche's downloaders. Images
are fedcond's normalised tensors, so the buffer's distilled images and the training
stream share one input space.

Names: ``split-digits`` (default, scikit-learn digits, offline), ``split-mnist``,
``split-fashion-mnist``, ``split-cifar10`` — 5 experiences of 2 classes each, classes in
their natural order (0-1, 2-3, ...). ``task_incremental=True`` gives each experience its
own task label (the task-incremental variant); class ids stay global.

Validation, never test, for every choice: ``validation`` carves a seeded, class-stratified
share of the training images (so of each experience's) out of the training stream. With
``evaluate_on="validation"`` the scenario's evaluation stream is that held-out share and the
test images are not in the benchmark at all: a tuner built on it cannot see them. With
``evaluate_on="test"`` (the reported run) the same share is still left out of training, so a
setting chosen on validation runs on exactly the data it was chosen with.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.utils import as_classification_dataset
from torch.utils.data import TensorDataset

from fedcond.data import ImageDataset, load_dataset
from fedcond.errors import FedcondError

BENCHMARKS = {
    "split-digits": "digits",
    "split-mnist": "mnist",
    "split-fashion-mnist": "fashion-mnist",
    "split-cifar10": "cifar10",
}
# Model: the plain (instance-norm) ConvNet. It used to collapse on 8x8 digits (its last block
# normalised a 2x2 map); since fedcond.models stops at depth 2 there (last block sees 4x4) it
# matches convnet-bn on replay and is far better for distilled replay (measured, split-digits,
# seed 0-1, memory 10: replay 0.535 vs 0.548 with convnet-bn; distilled replay seed 0 0.571 vs
# 0.189 — with batch norm the DM images barely help; benchmarks/results/continual_split-digits_compare.md).
# digits has ~270 training images per experience: one epoch is only ~8 SGD steps, so its
# defaults are replay's tuned values at memory 10-50 (lr 0.003, 20 epochs per experience;
# benchmarks/results/continual_split-digits_tune.md).
_DEFAULTS = {"split-digits": {"model": "convnet", "epochs": 20, "lr": 0.003}}
_GENERIC = {"model": "convnet", "epochs": 1, "lr": 0.01}
_ALIASES = {"splitmnist": "split-mnist", "splitfashionmnist": "split-fashion-mnist",
            "splitcifar10": "split-cifar10", "splitcifar-10": "split-cifar10", "split-cifar-10": "split-cifar10",
            "splitdigits": "split-digits"}


@dataclass
class Benchmark:
    """An Avalanche scenario and the fedcond data set it was built from."""

    name: str
    scenario: Any  # avalanche NCScenario: train_stream / test_stream
    data: ImageDataset  # its train split is the training stream's images (the validation share removed)
    task_incremental: bool
    evaluated_on: str = "test"  # what the scenario's test stream holds: "test" or "validation"
    validation: float = 0.0  # share of each class's training images held out for validation

    @property
    def n_experiences(self) -> int:
        return len(self.scenario.train_stream)


class _Tensors(TensorDataset):
    """A TensorDataset with the ``targets`` list Avalanche reads class ids from."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__(images, labels)
        self.targets = labels.tolist()


def canonical_name(name: str) -> str:
    """``SplitMNIST`` / ``split_mnist`` / ``split-mnist`` -> ``split-mnist``; unknown -> FedcondError."""
    key = name.lower().replace("_", "-")
    key = _ALIASES.get(key.replace("-", ""), key) if key not in BENCHMARKS else key
    if key not in BENCHMARKS:
        raise FedcondError(f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)}")
    return key


def benchmark_defaults(name: str) -> dict[str, Any]:
    """Model, epochs per experience and learning rate used for a benchmark unless given."""
    return {**_GENERIC, **_DEFAULTS.get(canonical_name(name), {})}


def default_model(name: str) -> str:
    """The network used for a benchmark when none is given."""
    return benchmark_defaults(name)["model"]


def make_benchmark(
    name: str = "split-digits",
    data_dir: str | os.PathLike | None = None,
    n_experiences: int = 5,
    task_incremental: bool = False,
    train_fraction: float = 1.0,
    seed: int = 0,
    data: ImageDataset | None = None,
    validation: float = 0.0,
    evaluate_on: str = "test",
) -> Benchmark:
    """Build a split benchmark by name.

    Args:
        data_dir: local mirror for the torchvision data sets (nothing is downloaded then).
        n_experiences: experiences (the number of classes must divide evenly).
        task_incremental: one task label per experience instead of a single task.
        train_fraction: keep this stratified fraction of each class's training images
            (smaller CPU runs); the test split is always complete.
        seed: seed of that subsampling.
        data: an already loaded ImageDataset (skips loading; ``name`` is then only a label).
        validation: share of each class's training images carved out (seeded by ``seed``;
            0: none); they never train.
        evaluate_on: ``"test"`` (the test split) or ``"validation"`` (the carved share; the
            test images are then not in the benchmark).
    """
    key = canonical_name(name)
    if data is None:
        data = load_dataset(BENCHMARKS[key], data_dir=data_dir)
    if data.num_classes % n_experiences:
        raise FedcondError(f"{data.num_classes} classes do not split into {n_experiences} equal experiences")
    if not 0 < train_fraction <= 1:
        raise FedcondError(f"train fraction must be in (0, 1], got {train_fraction}")
    if evaluate_on not in ("test", "validation"):
        raise FedcondError(f"evaluate_on must be 'test' or 'validation', got {evaluate_on!r}")
    if not 0 <= validation < 1 or (evaluate_on == "validation" and validation == 0):
        raise FedcondError(f"validation share must be in [0, 1) (> 0 to evaluate on it), got {validation}")
    if train_fraction < 1:
        data = data.subset(stratified_indices(data.train_labels, train_fraction, seed))
    if validation > 0:
        data, held_out = split_validation(data, validation, seed)
        if evaluate_on == "validation":  # the test images leave the benchmark: nothing can be chosen on them
            data = dataclasses.replace(data, test_images=held_out[0], test_labels=held_out[1])
    train = as_classification_dataset(_Tensors(data.train_images, data.train_labels))
    test = as_classification_dataset(_Tensors(data.test_images, data.test_labels))
    scenario = nc_benchmark(
        train, test, n_experiences=n_experiences, task_labels=task_incremental,
        shuffle=False, fixed_class_order=list(range(data.num_classes)),
    )
    return Benchmark(name=key, scenario=scenario, data=data, task_incremental=task_incremental,
                     evaluated_on=evaluate_on, validation=validation)


def split_validation(data: ImageDataset, share: float, seed: int) -> tuple[ImageDataset, tuple[torch.Tensor, ...]]:
    """``data`` without a seeded ``share`` of each class's training images, and those images
    and labels. The draw depends on ``seed`` only (10 ** 6 + seed: not the subsampling's draw)."""
    held = stratified_indices(data.train_labels, share, 10**6 + seed)
    keep = torch.ones(data.train_labels.numel(), dtype=torch.bool)
    keep[held] = False
    rest = torch.nonzero(keep).flatten()
    return (dataclasses.replace(data, train_images=data.train_images[rest], train_labels=data.train_labels[rest]),
            (data.train_images[held], data.train_labels[held]))


def stratified_indices(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A seeded ``fraction`` of each class's indices (at least one per class)."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        n = max(1, round(fraction * idx.numel()))
        keep.append(idx[torch.randperm(idx.numel(), generator=g)[:n]])
    return torch.cat(keep).sort().values
