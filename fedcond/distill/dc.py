"""DC: dataset condensation with gradient matching (Zhao et al., ICLR 2021), and DSA.

Each iteration draws a fresh network and alternates ``outer_loop`` times: (1) per class,
match the gradient of the cross-entropy on a real batch with the gradient on the class's
synthetic images (layer-wise distance: per output node ``1 - cos``, summed; 1-D parameters
such as biases and norm scales are ignored, as in the paper), and take one SGD step on the
synthetic images (lr 0.1, momentum 0.5); (2) train the network on the synthetic set for
``inner_loop`` epochs (SGD lr 0.01). Method ``dsa`` (Zhao & Bilen, ICML 2021) is the same
with differentiable siamese augmentation: one draw per class shared by its real and
synthetic batches, and per-image augmentation while training the network.

Per-class gradients: either all classes at once with ``torch.func`` (``vmap`` over
classes of ``grad`` via ``functional_call``) or a Python loop of ``autograd.grad`` per
class. The loop is the default because it measured faster on one CPU thread for
MNIST-sized ConvNet batches (10 classes x 256): vmap turns each convolution into a grouped
one. ``vectorised=True`` selects vmap (untimed on GPU so far). Networks with BatchNorm
always use the loop (in-place running statistics cannot be vmapped); the literature's
ConvNet uses instance norm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from fedcond.augment import DSA
from fedcond.distill.base import Callbacks, register
from fedcond.distill.loop import IterativeConfig, IterativeDistiller, RunSetup, Step
from fedcond.distill.matching import class_rows, fresh_network, to_device
from fedcond.errors import FedcondError
from fedcond.sampling import ClassSampler
from fedcond.train import train_model

# (outer_loop, inner_loop) by images per class, from the DC paper's code.
PAPER_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def paper_loops(ipc: int) -> tuple[int, int]:
    """The paper's (outer_loop, inner_loop) for ``ipc`` (the nearest tabulated ipc below)."""
    return PAPER_LOOPS[max(k for k in PAPER_LOOPS if k <= max(ipc, 1))]


# ---------------------------------------------------------------- pure functions
def gradient_distance(real: list[torch.Tensor], syn: list[torch.Tensor]) -> torch.Tensor:
    """DC's layer-wise distance summed over layers (and over a leading class dim, if any).

    Each pair has shape ``(..., out, *rest)`` with ``rest`` non-empty (weights only):
    per output node, ``1 - cos(g_real, g_syn)`` over the flattened ``rest``.
    """
    total = real[0].new_zeros(())
    for gr, gs in zip(real, syn):
        lead = gr.dim() - 1 - _rest_dims(gr)
        gr, gs = gr.flatten(lead + 1), gs.flatten(lead + 1)
        cos = (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def _rest_dims(g: torch.Tensor) -> int:
    # conv weights (out, in, kh, kw) -> 3 trailing dims; linear (out, in) -> 1. A leading
    # class dim adds one, so decide by the parameter rank without it: 5/4 -> conv, 3/2 -> linear.
    return 3 if g.dim() >= 4 else 1


def soft_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of cross-entropies against target distributions (weights sum to 1)."""
    return (weights * -(targets * F.log_softmax(logits, dim=-1)).sum(-1)).sum()


def class_gradients(
    net: nn.Module, images: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
    create_graph: bool, vectorised: bool = True,
) -> list[torch.Tensor]:
    """Per-class gradients of the weighted CE w.r.t. the network's weight tensors.

    Args:
        images: (R, B, C, H, W) per-class batches; targets (R, B, K); weights (R, B).
        create_graph: keep the graph to ``images`` (synthetic side) for the outer step.
    Returns:
        One tensor (R, *weight.shape) per weight tensor (parameters of rank >= 2).
    """
    params = dict(net.named_parameters())
    names = [n for n, p in params.items() if p.dim() > 1]
    fixed = {n: p.detach() for n, p in params.items() if p.dim() <= 1}
    fixed.update(dict(net.named_buffers()))
    weights_now = {n: params[n].detach() for n in names}

    def loss(w: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
        return soft_ce(functional_call(net, {**w, **fixed}, (x,)), t, sw)

    if vectorised:
        g = vmap(grad(loss), in_dims=(None, 0, 0, 0))(weights_now, images, targets, weights)
        out = [g[n] for n in names]
        return out if create_graph else [t.detach() for t in out]
    leaves = {n: t.clone().requires_grad_(True) for n, t in weights_now.items()}
    per_class = []
    for r in range(images.shape[0]):
        g = torch.autograd.grad(loss(leaves, images[r], targets[r], weights[r]), list(leaves.values()),
                                create_graph=create_graph)
        per_class.append(g)
    return [torch.stack([g[i] for g in per_class]) for i in range(len(names))]


# ---------------------------------------------------------------- config and method
@dataclass
class DCConfig(IterativeConfig):
    """DC settings (paper: 1000 iterations, lr_images 0.1, momentum 0.5, batch_real 256,
    lr_net 0.01, batch_train 256). ``outer_loop``/``inner_loop`` default to the paper's
    values for the ipc (see PAPER_LOOPS). The default ``iterations`` is sized for a CPU."""

    iterations: int = 50  # digits IPC1 in seconds on a CPU (benchmarks/results/distill_digits_ipc1_dc.md)
    lr_images: float = 0.1
    dsa: bool = False
    outer_loop: int | None = None
    inner_loop: int | None = None
    lr_net: float = 0.01
    batch_train: int = 256
    vectorised: bool = False  # vmap over classes; the loop measured faster on CPU

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.outer_loop is not None and self.outer_loop < 1) or (
            self.inner_loop is not None and self.inner_loop < 0
        ):
            raise FedcondError("outer_loop must be >= 1 and inner_loop >= 0")
        if self.lr_net <= 0 or self.batch_train < 1:
            raise FedcondError("lr_net must be > 0 and batch_train >= 1")

    def loops(self) -> tuple[int, int]:
        outer, inner = paper_loops(self.ipc)
        return (self.outer_loop or outer, inner if self.inner_loop is None else self.inner_loop)


@dataclass
class DSAConfig(DCConfig):
    """DC with differentiable siamese augmentation (paper: 1000 iterations, same settings)."""

    dsa: bool = True


@register("dc")
class DC(IterativeDistiller):
    """Gradient matching; ``dsa`` is the same with siamese augmentation."""

    config_class: ClassVar[type[DCConfig]] = DCConfig

    def prepare(self, run: RunSetup, generator: torch.Generator, callbacks: Callbacks) -> Step:
        """DC's step: a fresh network, ``outer_loop`` matching steps with inner training between."""
        config, device, dataset = run.config, run.device, run.dataset
        sampler, syn_class, state = run.sampler, run.syn_class, run.state
        model = config.model
        k = dataset.num_classes
        outer_loop, inner_loop = config.loops()

        rows = sampler.num_rows
        real_w = sampler.weights(config.batch_real, device)
        width = real_w.shape[1]
        real_rows = torch.arange(rows, device=device).repeat_interleave(width)
        real_t = F.one_hot(sampler.classes.to(device), k).float()[:, None, :].expand(rows, width, k)
        slots = ClassSampler.from_labels(class_rows(syn_class, sampler.classes).cpu(), rows)
        slot_idx, slot_w = slots.table.to(device), slots.weights(slots.table.shape[1], device)
        slot_rows = torch.arange(rows, device=device).repeat_interleave(slot_idx.shape[1])
        hard_t = F.one_hot(syn_class, k).float()
        dsa = DSA(config.dsa_strategy) if config.dsa else None
        vectorised = config.vectorised and not any(
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            for m in fresh_network(model, dataset, torch.Generator(), device).modules()
        )
        net: nn.Module | None = None

        def step(_: int) -> torch.Tensor:
            nonlocal net
            net = fresh_network(model, dataset, generator, device, reuse=net).train()
            total = torch.zeros((), device=device)
            for ol in range(outer_loop):
                real = dataset.train_images[to_device(sampler.sample(config.batch_real, generator).flatten(), device)]
                syn = state.images[slot_idx.flatten()]
                if dsa is not None:
                    params = dsa.sample_params(rows, generator).to(device)
                    real = dsa.apply(real, params.take(real_rows))
                    syn = dsa.apply(syn, params.take(slot_rows))
                probs = hard_t if state.label_logits is None else torch.softmax(state.label_logits, dim=1)
                g_real = class_gradients(
                    net, real.view(rows, width, *real.shape[1:]), real_t, real_w, False, vectorised
                )
                g_syn = class_gradients(
                    net, syn.view(*slot_idx.shape, *syn.shape[1:]), probs[slot_idx], slot_w, True, vectorised
                )
                loss = gradient_distance(g_real, g_syn)
                state.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                state.optimizer.step()
                total = total + loss.detach()
                if ol < outer_loop - 1 and inner_loop > 0:
                    train_model(net, state.images.detach(), state.labels(syn_class), inner_loop, lr=config.lr_net,
                                momentum=0.0, weight_decay=0.0, batch_size=config.batch_train, generator=generator,
                                augment=dsa, lr_decay_at_half=False)
            return total / outer_loop

        return step


@register("dsa")
class DCWithDSA(DC):
    """DC with differentiable siamese augmentation (Zhao & Bilen, ICML 2021)."""

    config_class = DSAConfig
