"""The server's torch work: the global model, training it on pooled sets, testing it.

All strategies share :func:`evaluate_arrays` (central evaluation on the run's validation
split, which picks the reported round, and on the real test split, after every round), so
accuracies are comparable. FedCond's server trains the global model
on the pooled synthetic sets with the evaluation protocol (:func:`train_on_pool`, i.e.
``train_model`` with the comparison's recipe, :mod:`fedcond.recipe`: SGD, momentum 0.9,
weight decay 5e-4, lr / 10 at half the epochs, each mini-batch augmented as every
learner's). The global model's architecture is
:func:`fedcond.federated.records.new_model`, which clients build too.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from fedcond.data import ImageDataset
from fedcond.federated.config import AppConfig
from fedcond.federated.records import load_record, model_to_record, new_model
from fedcond.synthetic import SyntheticSet
from fedcond.train import accuracy, train_model


def evaluate_arrays(data: ImageDataset, cfg: AppConfig, arrays: Any,
                    validation: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, float]:
    """Accuracies (fractions) of the model held in ``arrays`` (a flwr ArrayRecord): ``accuracy``
    on the test split and, given ``validation`` (images, labels), ``val_accuracy`` on it."""
    model = load_record(new_model(data, cfg), arrays)
    out = {"accuracy": accuracy(model, data.test_images, data.test_labels)}
    if validation is not None:
        out["val_accuracy"] = accuracy(model, *validation)
    return out


def pool_sets(sets: list[SyntheticSet]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the training images and labels of several sets (multi-formation mosaics
    decoded into their tiles; hard labels as int64, soft as float)."""
    sets = [s.decoded() for s in sets]
    images = torch.cat([s.images.float() for s in sets])
    if any(s.soft_labels for s in sets):
        k = sets[0].num_classes
        labels = torch.cat(
            [s.labels.float() if s.soft_labels else nn.functional.one_hot(s.labels, k).float() for s in sets]
        )
    else:
        labels = torch.cat([s.labels for s in sets])
    return images, labels


def train_on_pool(
    model: nn.Module, sets: list[SyntheticSet], cfg: AppConfig, server_round: int,
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` in place on the pooled sets with the comparison's recipe
    (:attr:`AppConfig.server_recipe`), in the run's precision (``cfg.precision``
    resolved on ``cfg.device``); ``extra_loss`` (logits, labels) is added to every
    mini-batch's loss (FedAF's distillation term)."""
    images, labels = pool_sets(sets)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + server_round)
    return train_model(model, images, labels, cfg.server_epochs, lr=cfg.server_lr_train,
                       batch_size=256, generator=gen, precision=cfg.resolved_precision(),
                       extra_loss=extra_loss, **cfg.server_recipe.train_kwargs(images.shape[1]))


def pool_trainer(data: ImageDataset, cfg: AppConfig) -> Callable[..., Any]:
    """The training a FedCond server does with its pool, from the run's settings: a callable
    ``(sets, server_round, start, extra_loss) -> ArrayRecord`` that builds the run's global
    model (:func:`new_model`), loads ``start`` (an ArrayRecord; None: the fresh model) and
    trains it with :func:`train_on_pool`."""

    def train(sets: list[SyntheticSet], server_round: int, start: Any = None,
              extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Any:
        model = new_model(data, cfg)
        if start is not None:
            load_record(model, start)
        train_on_pool(model, sets, cfg, server_round, extra_loss)
        return model_to_record(model)

    return train
