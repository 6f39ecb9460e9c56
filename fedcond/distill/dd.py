"""DD: dataset distillation by backpropagating through training (Wang et al., 2018).

The historical baseline of the field. Each iteration draws a freshly initialised network
(the paper's "random init" variant, which transfers to new initialisations), trains it for
``unroll_steps`` full-batch gradient steps on the synthetic set with learned per-step
learning rates, and measures the cross-entropy of the trained network on a class-balanced
real batch. That loss is differentiated back through the training steps to the synthetic
images (and the step sizes), which take one optimiser step (Adam by default).

Truncated unrolling: only the last ``backprop_steps`` inner steps are differentiated; the
earlier ones run without a graph and their result is treated as a constant start. Memory
then grows with ``backprop_steps``, not with ``unroll_steps`` (truncated backpropagation
through time, as later DD variants do to reach longer inner runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fedcond.distill.base import Callbacks, register
from fedcond.distill.functional import FlatNetwork
from fedcond.distill.loop import IterativeConfig, IterativeDistiller, RunSetup, Step
from fedcond.distill.matching import fresh_network, to_device
from fedcond.errors import FedcondError


@dataclass
class DDConfig(IterativeConfig):
    """DD settings (paper: 10 inner steps, 3 epochs over them, Adam lr 0.01 on pixels).

    Attributes:
        unroll_steps: inner gradient steps on the synthetic set per iteration.
        backprop_steps: differentiate through only the last this many (None: all).
        lr_teacher: initial value of each learned inner step size.
        lr_lr: optimiser learning rate of the step sizes.
    """

    iterations: int = 200  # sized for a CPU (benchmarks/results/methods_digits.md)
    optimizer: str = "adam"
    lr_images: float = 0.01
    batch_real: int = 64
    dsa: bool = False
    unroll_steps: int = 10
    backprop_steps: int | None = None
    lr_teacher: float = 0.02
    lr_lr: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unroll_steps < 1:
            raise FedcondError(f"unroll_steps must be >= 1, got {self.unroll_steps}")
        if self.backprop_steps is not None and not 1 <= self.backprop_steps <= self.unroll_steps:
            raise FedcondError(
                f"backprop_steps must be in [1, unroll_steps={self.unroll_steps}], got {self.backprop_steps}"
            )
        if self.lr_teacher <= 0 or self.lr_lr < 0:
            raise FedcondError("lr_teacher must be > 0 and lr_lr >= 0")

    @property
    def differentiated_steps(self) -> int:
        return self.unroll_steps if self.backprop_steps is None else self.backprop_steps


def unrolled_loss(
    student: FlatNetwork,
    start: torch.Tensor,
    step_sizes: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    real: torch.Tensor,
    real_labels: torch.Tensor,
    backprop_steps: int,
) -> torch.Tensor:
    """Real-batch loss after training from ``start`` on (images, labels), one step per step size.

    Only the last ``backprop_steps`` steps are part of the graph (truncated unrolling).
    """
    steps = step_sizes.shape[0]
    w = start
    for i in range(steps):
        keep = i >= steps - backprop_steps
        if keep:
            g = student.loss_gradient(w, images, labels, create_graph=True)
            w = w - step_sizes[i] * g
        else:
            g = student.loss_gradient(w, images.detach(), labels.detach(), create_graph=False)
            w = w - step_sizes[i].detach() * g
    return F.cross_entropy(student(w, real), real_labels)


@register("dd")
class DD(IterativeDistiller):
    """Backpropagation through (truncated) training; see the module docstring."""

    config_class = DDConfig

    def extras(self, config: DDConfig) -> dict[str, tuple[torch.Tensor, float]]:
        """The learned inner step sizes (recorded in the set as ``learned_step_sizes``)."""
        return {"step_sizes": (torch.full((config.unroll_steps,), config.lr_teacher), config.lr_lr)}

    def prepare(self, run: RunSetup, generator: torch.Generator, callbacks: Callbacks) -> Step:
        """DD's step: a fresh network trained on the set, its real-batch loss back to the set."""
        config, device, dataset = run.config, run.device, run.dataset
        sampler, state = run.sampler, run.state
        real_weights = sampler.weights(config.batch_real, device)
        real_mask = real_weights.flatten() > 0  # drop padding slots of small classes
        real_labels_all = sampler.classes.to(device).repeat_interleave(real_weights.shape[1])
        net = None

        def step(_: int) -> torch.Tensor:
            nonlocal net
            net = fresh_network(config.model, dataset, generator, device, reuse=net).train()
            student = FlatNetwork(net)
            idx = to_device(sampler.sample(config.batch_real, generator).flatten(), device)
            real, real_labels = dataset.train_images[idx][real_mask], real_labels_all[real_mask]
            loss = unrolled_loss(student, student.flatten(), state.extras["step_sizes"], state.images, run.labels(),
                                 real, real_labels, config.differentiated_steps)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            with torch.no_grad():
                state.extras["step_sizes"].clamp_(min=0.0)  # a negative step would ascend the loss
            return loss.detach()

        return step
