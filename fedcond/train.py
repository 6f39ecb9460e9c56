"""The one training loop: train a model on tensors, and measure its accuracy.

Used by evaluation, by the federated server (training the global model on pooled sets),
by the FedAvg clients and by the continual runner. Hard labels use cross-entropy; soft
labels (N, K) are target distributions and use soft cross-entropy, at a temperature when
they are a teacher's softened outputs (knowledge distillation, see ``fedcond.relabel``).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from fedcond.precision import autocast


class Augment(Protocol):
    """A batch augmentation drawing its randomness from ``generator`` (e.g. DSA)."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions (rows of ``targets``)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy for int64 ids, soft cross-entropy for (N, K) float targets.

    With soft labels and ``temperature`` T != 1 this is Hinton et al.'s distillation loss
    ``T**2 * CE(targets, softmax(logits / T))``, the targets being a teacher's
    ``softmax(teacher_logits / T)``; T**2 keeps gradient magnitudes comparable across T.
    Hard labels ignore ``temperature``.
    """
    if labels.dim() == 2:
        if temperature == 1.0:
            return soft_cross_entropy(logits, labels)
        return temperature**2 * soft_cross_entropy(logits / temperature, labels)
    return F.cross_entropy(logits, labels)


def train_model(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    augment: Augment | None = None,
    lr_decay_at_half: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
    temperature: float = 1.0,
    precision: str = "float32",
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` in place with SGD on (images, labels); return it.

    The distillation literature's protocol: SGD with momentum, learning rate divided by 10
    at half the epochs, mini-batches reshuffled every epoch. Tensors stay on their device.

    Args:
        generator: source of shuffling (and augmentation) randomness; a CPU generator is fine.
        augment: optional batch augmentation applied to each mini-batch.
        on_epoch: called with (epoch index, mean loss) after each epoch (progress display).
        temperature: distillation temperature for soft labels (see :func:`classification_loss`).
        precision: ``float32``, or ``bfloat16``: forward passes and loss under autocast
            (weights, optimiser state and images stay float32; :mod:`fedcond.precision`), on
            a CPU in channels-last layout, oneDNN's fast one for bfloat16 (the model is
            handed back in the contiguous layout). Resolve ``auto`` before calling.
        extra_loss: a term added to every mini-batch's loss, given its logits (float32) and
            labels (FedAF's server adds its distillation to the clients' soft labels).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError("cannot train on an empty set")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device = images.device
    model.to(device).train()
    channels_last = precision == "bfloat16" and device.type == "cpu" and images.dim() == 4
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = None
    if lr_decay_at_half and epochs > 1:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[epochs // 2], gamma=0.1)
    n = images.shape[0]
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        # Pinned and asynchronous on CUDA: a plain copy would make the host wait every epoch.
        order = order.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else order.to(device)
        total, count = torch.zeros((), device=device), 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = images[idx], labels[idx]
            if augment is not None:
                x = augment(x, generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(precision, device):
                logits = model(x)
            loss = classification_loss(logits.float(), y, temperature)  # the loss in float32 either way
            if extra_loss is not None:
                loss = loss + extra_loss(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * idx.numel()
            count += idx.numel()
        if sched is not None:
            sched.step()
        if on_epoch is not None:
            on_epoch(epoch, float(total) / count)  # one host sync per epoch, only when asked
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on (images, labels) as a fraction in [0, 1]."""
    if images.shape[0] == 0:
        raise ValueError("cannot measure accuracy on an empty set")
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start : start + batch_size])
        correct += (logits.argmax(dim=1) == labels[start : start + batch_size]).sum()
    model.train(was_training)
    return int(correct) / images.shape[0]
