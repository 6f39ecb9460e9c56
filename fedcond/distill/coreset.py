"""Coreset baselines: pick real images per class — random, herding, k-center greedy.

Selection rules are pure functions over feature tensors; the Distiller classes only add
feature extraction. Herding and k-center work in the feature space of a ConvNet briefly
trained on (a subset of) the real data, as in the distillation literature's baselines;
``feature_epochs = 0`` uses a randomly initialised network instead.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace

import torch

from fedcond.data import ImageDataset
from fedcond.distill.base import (
    Callbacks,
    DistillConfig,
    Distiller,
    DistillInputs,
    emit,
    generator_seed,
    make_set,
    register,
)
from fedcond.errors import FedcondError
from fedcond.formation import check_factor, encode
from fedcond.models import get_model
from fedcond.synthetic import SyntheticSet
from fedcond.train import train_model


# ---------------------------------------------------------------- pure selection rules
def herding_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy herding (Welling 2009): indices whose running mean tracks the feature mean.

    At step t, pick the unused row that brings the mean of the t picked rows closest to
    the mean of all rows.
    """
    n = features.shape[0]
    k = min(k, n)
    mu = features.mean(dim=0)
    total = torch.zeros_like(mu)
    available = torch.ones(n, dtype=torch.bool, device=features.device)
    picked: list[int] = []
    for t in range(1, k + 1):
        dist = ((mu - (total + features) / t) ** 2).sum(dim=1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        picked.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(picked, dtype=torch.long)


def kcenter_select(features: torch.Tensor, k: int) -> torch.Tensor:
    """k-center greedy (Sener & Savarese 2018): start at the row nearest the mean, then
    repeatedly add the row farthest from all picked rows."""
    n = features.shape[0]
    k = min(k, n)
    first = int(((features - features.mean(dim=0)) ** 2).sum(dim=1).argmin())
    picked = [first]
    min_dist = ((features - features[first]) ** 2).sum(dim=1)
    for _ in range(k - 1):
        i = int(min_dist.argmax())
        picked.append(i)
        min_dist = torch.minimum(min_dist, ((features - features[i]) ** 2).sum(dim=1))
    return torch.tensor(picked, dtype=torch.long)


def random_select(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``min(k, n)`` distinct indices out of ``n``."""
    return torch.randperm(n, generator=generator)[: min(k, n)]


# ---------------------------------------------------------------- distillers
@dataclass
class CoresetConfig(DistillConfig):
    """Coreset options; the feature fields matter only to herding and k-center."""

    feature_epochs: int = 2  # epochs to train the feature network (0 = random init)
    feature_train_images: int = 10_000  # cap on the real images used to train it
    # Multi-formation (fedcond.formation): select ipc * factor**2 images per class and store
    # them as ipc mosaics of factor x factor downsampled tiles (same bytes as ipc images).
    factor: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_epochs < 0 or self.feature_train_images < 1:
            raise FedcondError("feature_epochs must be >= 0 and feature_train_images >= 1")
        if not isinstance(self.factor, int) or self.factor < 1:
            raise FedcondError(f"factor must be an integer >= 1, got {self.factor!r}")


def _present_classes(dataset: ImageDataset) -> list[tuple[int, torch.Tensor]]:
    """(class id, train indices) for classes with at least one image (clients may lack some)."""
    return [(c, idx) for c, idx in enumerate(dataset.class_indices()) if idx.numel() > 0]


def feature_extractor(
    dataset: ImageDataset, config: CoresetConfig, generator: torch.Generator
) -> torch.nn.Module:
    """A network (trained briefly unless ``feature_epochs == 0``) whose ``embed`` gives features."""
    c, h, w = dataset.image_shape
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    net = get_model(config.model, c, dataset.num_classes, (h, w), seed=seed).to(dataset.device)
    if config.feature_epochs > 0:
        n = dataset.train_images.shape[0]
        idx = torch.randperm(n, generator=generator)[: config.feature_train_images].to(dataset.device)
        train_model(
            net, dataset.train_images[idx], dataset.train_labels[idx], config.feature_epochs, generator=generator
        )
    return net.eval()


@torch.no_grad()
def embed_all(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``net.embed`` over ``images`` in batches."""
    return torch.cat([net.embed(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])


class Coreset(Distiller):
    """A coreset method: ``select`` picks real training images per class; this base stores
    them (as mosaics of ``factor**2`` picks when ``factor`` > 1)."""

    config_class = CoresetConfig

    @abstractmethod
    def select(self, dataset: ImageDataset, config: CoresetConfig, generator: torch.Generator,
               callbacks: Callbacks) -> torch.Tensor:
        """Training indices, grouped by class, up to ``config.ipc`` per present class."""

    def _distill(self, dataset: ImageDataset, config: CoresetConfig, generator: torch.Generator, device: torch.device,
                 callbacks: Callbacks, inputs: DistillInputs) -> SyntheticSet:
        seed = generator_seed(generator)
        dataset = dataset.to(device)
        f = config.factor
        check_factor(f, tuple(dataset.image_shape[1:]))
        tiles = f * f
        idx = self.select(dataset, replace(config, ipc=config.ipc * tiles), generator, callbacks).to(dataset.device)
        if f == 1:
            return make_set(dataset, dataset.train_images[idx], dataset.train_labels[idx], self.name, config, seed)
        idx = fill_mosaics(idx, dataset.train_labels[idx], tiles)
        images = encode(dataset.train_images[idx], f)
        return make_set(dataset, images, dataset.train_labels[idx[::tiles]], self.name, config, seed, factor=f)


def fill_mosaics(idx: torch.Tensor, labels: torch.Tensor, tiles: int) -> torch.Tensor:
    """Selected indices (grouped by class) padded per class to whole mosaics of ``tiles``,
    repeating the class's own picks: a class of 5 images and 4 tiles gives 2 mosaics."""
    out = []
    for c in labels.unique():
        own = idx[labels == c]
        need = -(-own.numel() // tiles) * tiles
        out.append(own.repeat(-(-need // own.numel()))[:need])
    return torch.cat(out)


@register("random")
class RandomCoreset(Coreset):
    """``ipc`` random real images per class."""

    def select(self, dataset: ImageDataset, config: CoresetConfig, generator: torch.Generator,
               callbacks: Callbacks) -> torch.Tensor:
        classes = _present_classes(dataset)
        picked = [idx[random_select(idx.numel(), config.ipc, generator).to(idx.device)] for _, idx in classes]
        emit(callbacks, 1, 1, {})
        return torch.cat(picked)


class _FeatureCoreset(Coreset):
    """Per class, a selection ``rule`` over the features of a (briefly trained) network."""

    rule = staticmethod(herding_select)

    def select(self, dataset: ImageDataset, config: CoresetConfig, generator: torch.Generator,
               callbacks: Callbacks) -> torch.Tensor:
        net = feature_extractor(dataset, config, generator)
        classes = _present_classes(dataset)
        picked = []
        for i, (_, idx) in enumerate(classes):
            feats = embed_all(net, dataset.train_images[idx])
            picked.append(idx[self.rule(feats, config.ipc).to(idx.device)])
            emit(callbacks, i + 1, len(classes), {})
        return torch.cat(picked)


@register("herding")
class HerdingCoreset(_FeatureCoreset):
    """Herding in a ConvNet's feature space, per class."""

    rule = staticmethod(herding_select)


@register("kcenter")
class KCenterCoreset(_FeatureCoreset):
    """k-center greedy in a ConvNet's feature space, per class."""

    rule = staticmethod(kcenter_select)
