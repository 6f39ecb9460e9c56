"""Training a continual learner on its class-balanced memory alone (the GDumb idea).

A handful of distilled images per class carries about as much as a ConvNet trained on
them from scratch can use under the evaluation protocol (digits, DM IPC1: 0.90 against
0.70 for one random real image per class). Replaying one of them in every mini-batch of a
new experience uses little of that; training on the balanced memory for as many steps as
the evaluation protocol gives a synthetic set uses all of it. This module is that step,
pure and shared by :class:`~fedcond.continual.plugin.DistilledFinetunePlugin`,
:class:`~fedcond.continual.plugin.DistilledReplayPlugin` (modes ``finetune`` and ``retrain``)
and the fair raw-image GDumb baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedcond.errors import FedcondError
from fedcond.train import train_model


@dataclass
class BufferTraining:
    """The recipe for training on the memory: the evaluation protocol's SGD by default.

    Attributes:
        epochs: passes over the memory (the memory fits one ``batch_size`` batch for
            budgets up to 256, so this is also the number of SGD steps there).
        lr, momentum, weight_decay, batch_size: SGD settings.
        lr_decay_at_half: lr / 10 at half the epochs (the ``step-half`` schedule of a
            :class:`fedcond.recipe.Recipe`).
        augment: DSA families applied to every batch, ``""`` for none. Default
            ``crop_scale_rotate`` (as DC/DM evaluate MNIST; no flips or colour changes, so it
            suits digits and natural images alike). Measured on split-digits, DM buffer,
            seed 0: memory 10 0.898 -> 0.942, memory 100 0.967 -> 0.987. In ``fedcond
            continual`` it is the comparison's recipe's, the augmentation every strategy gets.
    """

    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    augment: str = "crop_scale_rotate"
    lr_decay_at_half: bool = True

    @classmethod
    def from_recipe(cls, recipe: Any, channels: int, epochs: int = 300, lr: float = 0.01) -> "BufferTraining":
        """The memory training of a :class:`fedcond.recipe.Recipe` (its momentum, weight decay,
        augmentation for ``channels``-channel images and schedule) for ``epochs`` at ``lr``."""
        return cls(epochs=epochs, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                   augment=recipe.augment_strategy(channels) or "", lr_decay_at_half=recipe.schedule == "step-half")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise FedcondError(f"buffer training needs epochs >= 1, batch size >= 1 and lr > 0, got {self}")
        if self.augment:
            from fedcond.augment import parse_strategy  # noqa: PLC0415  (torch's augmentation only when a recipe augments)

            parse_strategy(self.augment)  # a bad family name fails here, not after an experience


def train_on_memory(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: BufferTraining,
                    generator: torch.Generator, device: torch.device | str = "cpu",
                    precision: str = "float32") -> nn.Module:
    """Train ``model`` in place on (images, labels), the whole memory, with ``recipe``, in
    ``precision`` (resolved: ``float32`` or ``bfloat16``, see :func:`fedcond.train.train_model`).

    Labels are int64 class ids or (N, K) target distributions (soft labels); a model whose
    head is narrower than K (an incremental head) is scored on the units it has.
    """
    if _is_multitask(model):
        raise FedcondError("training on the memory needs a single-head model; with a multi-head "
                           "(task-incremental) model use mode='replay'")
    if labels.dim() == 2:
        width = _output_width(model, images[:1].to(device))
        labels = (
            labels[:, :width] if labels.shape[1] > width else nn.functional.pad(labels, (0, width - labels.shape[1]))
        )
    was_training = model.training
    augment = None
    if recipe.augment:
        from fedcond.augment import DSA  # noqa: PLC0415  (torch's augmentation only when a recipe augments)

        augment = DSA(strategy=recipe.augment)
    train_model(model, images.to(device), labels.to(device), recipe.epochs, lr=recipe.lr, momentum=recipe.momentum,
                weight_decay=recipe.weight_decay, batch_size=recipe.batch_size, generator=generator, augment=augment,
                lr_decay_at_half=recipe.lr_decay_at_half, precision=precision)
    model.train(was_training)
    return model


def _is_multitask(model: nn.Module) -> bool:
    try:
        from avalanche.models import MultiTaskModule  # noqa: PLC0415  (Avalanche's internals only on this path)
    except ImportError:  # the core runs without Avalanche
        return False
    return isinstance(model, MultiTaskModule)


@torch.no_grad()
def _output_width(model: nn.Module, x: torch.Tensor) -> int:
    was_training = model.training
    out = model.eval()(x).shape[1]
    model.train(was_training)
    return out
