"""KIP: kernel inducing points (Nguyen, Chen & Lee, ICLR 2021).

The synthetic set is the support set of a kernel ridge regression whose predictions on
real images should match their labels. Each iteration draws a class-balanced real batch,
computes the kernel between it and the synthetic images with the infinite-width NTK (or
NNGP) of a fully connected ReLU network (``fedcond.distill.kernels``), predicts the real
batch's labels by KRR from the synthetic images and their labels, and takes one Adam step
on the synthetic images (and labels, if learned) to reduce the squared error.

Targets are centred one-hot vectors (one-hot minus 1/K), as in KIP: the regression then
has no constant offset to spend its capacity on, and an all-zero prediction is the
uninformative one. Learned labels are stored as probabilities (the SyntheticSet format),
so KRR regresses onto ``softmax(logits) - 1/K``: what is saved is exactly what was used.
The loss weights each real image by 1/b_c within its class (``ClassSampler.weights``), so
classes count equally even when a class has fewer images than ``batch_real``.

The network named by ``model`` is not used: the kernel is analytic. With ``dsa`` a class
shares one augmentation draw between its real and synthetic images (as in DM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from fedcond.augment import DSA
from fedcond.distill.base import Callbacks, register
from fedcond.distill.kernels import krr_loss, relu_nngp, relu_ntk
from fedcond.distill.loop import IterativeConfig, IterativeDistiller, RunSetup, Step
from fedcond.distill.matching import SiameseBatches
from fedcond.errors import FedcondError

KERNELS = {"ntk": relu_ntk, "nngp": relu_nngp}

Kernel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kernel_function(name: str, depth: int, w_var: float, b_var: float) -> Kernel:
    """The kernel ``k(x1, x2) -> (N1, N2)`` called ``name`` ("ntk" or "nngp")."""
    try:
        fn = KERNELS[name]
    except KeyError:
        raise FedcondError(f"kernel must be one of {', '.join(KERNELS)}, got {name!r}") from None
    return lambda a, b: fn(a, b, depth, w_var, b_var)


def kip_loss(
    kernel: Kernel, syn: torch.Tensor, syn_targets: torch.Tensor, real: torch.Tensor,
    real_targets: torch.Tensor, real_weights: torch.Tensor, ridge: float,
) -> torch.Tensor:
    """Class-weighted squared error of KRR predictions on ``real`` from support ``syn``."""
    return krr_loss(kernel(syn, syn), kernel(real, syn), syn_targets, real_targets, real_weights, ridge)


def centred_one_hot(class_ids: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot rows minus 1/K (KIP's regression targets)."""
    return F.one_hot(class_ids, num_classes).float() - 1.0 / num_classes


@dataclass
class KIPConfig(IterativeConfig):
    """KIP settings. The paper uses Adam (lr 0.01-0.04), ridge 1e-6 relative to the mean
    kernel diagonal, FC ReLU kernels of depth 1-3 and thousands of iterations; the default
    ``iterations`` here is sized for a CPU (times: benchmarks/results/methods_digits.md). On digits IPC1
    (300 epochs, 2 runs) the defaults gave 0.902-0.906 over 3 seeds; 500 iterations, lr 0.04,
    depth 1, b_var 0 or the NNGP were no better (0.87-0.89, seed 0); learned labels (+0.008)
    and ``dsa`` (+0.006) were within the seed spread, so both stay off.

    Attributes:
        kernel: "ntk" or "nngp" of a fully connected ReLU network with ``depth`` hidden layers.
        w_var, b_var: that network's weight and bias variances.
        ridge: KRR regulariser relative to the mean diagonal of the support kernel.
    """

    iterations: int = 200
    optimizer: str = "adam"
    lr_images: float = 0.01
    lr_labels: float = 0.01
    dsa: bool = False
    kernel: str = "ntk"
    depth: int = 3
    w_var: float = 2.0
    b_var: float = 0.05
    ridge: float = 1e-6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel not in KERNELS:
            raise FedcondError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.depth < 0:
            raise FedcondError(f"depth must be >= 0, got {self.depth}")
        if self.w_var <= 0 or self.b_var < 0 or self.ridge < 0:
            raise FedcondError("w_var must be > 0, b_var >= 0 and ridge >= 0")


@register("kip")
class KIP(IterativeDistiller):
    """Kernel inducing points; see :func:`kip_loss`."""

    config_class = KIPConfig

    def prepare(self, run: RunSetup, generator: torch.Generator, callbacks: Callbacks) -> Step:
        """KIP's step: one real batch, one KRR loss step on the support set."""
        config, device, dataset = run.config, run.device, run.dataset
        sampler, syn_class, state = run.sampler, run.syn_class, run.state
        k = dataset.num_classes

        real_weights = sampler.weights(config.batch_real, device).flatten()
        batches = SiameseBatches.create(sampler, syn_class, config.batch_real,
                                        DSA(config.dsa_strategy) if config.dsa else None, device)
        real_targets = centred_one_hot(sampler.classes.to(device), k)[batches.real_rows]
        hard_targets = centred_one_hot(syn_class, k)
        kernel = kernel_function(config.kernel, config.depth, config.w_var, config.b_var)

        def step(_: int) -> torch.Tensor:
            real, syn = batches.draw(dataset.train_images, state.images, generator)
            targets = hard_targets
            if state.label_logits is not None:
                targets = torch.softmax(state.label_logits, dim=1) - 1.0 / k
            loss = kip_loss(kernel, syn, targets, real, real_targets, real_weights, config.ridge)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            return loss.detach()

        return step
