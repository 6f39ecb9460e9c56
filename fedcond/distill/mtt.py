"""MTT: dataset distillation by matching training trajectories (Cazenavette et al., CVPR 2022).

Each iteration picks an expert trajectory (see :mod:`fedcond.distill.experts`) and a start
epoch ``t <= max_start_epoch``, starts a student at the expert's parameters ``θ_t`` and
trains it for ``syn_steps`` SGD steps on (DSA-augmented) batches of the synthetic set with
a *learned* learning rate ``α``. The loss is the normalised distance to where the expert
was ``expert_epochs`` epochs later:

    L = ||w_N - θ_{t+M}||² / ||θ_t - θ_{t+M}||²

and the synthetic images (optionally labels) and ``α`` take one SGD step on it.

Memory. Backpropagating through the N unrolled steps (``gradient="unrolled"``, the
authors' way) keeps every step's graph alive, so memory grows linearly with N — the reason
the reference code needs several GPUs at IPC50. ``gradient="tesla"`` (the default) uses
TESLA's decomposition (Cui et al., ICML 2023): with ``w_N = θ_t - α Σ_i g_i``,

    ∂L/∂X_i = -α (∂g_i/∂X_i)ᵀ v,   v = ∂L/∂w_N = 2 (w_N - θ_{t+M}) / ||θ_t - θ_{t+M}||²,
    ∂L/∂α  = -vᵀ Σ_i g_i,

so a first pass runs the student without any graph (recording batches and augmentation
draws, summing the g_i), and a second pass replays the same steps, building ONE step's
graph at a time to push ``-α v`` back to that step's images. Memory is then constant in N,
at the price of a second forward/backward per step. Like TESLA, it drops the second-order
path through later parameters (how X_i changes w_j, hence g_j, for j > i): that path is
O(α²)·Hessian, small at MTT's learning rates (tests compare both modes' gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fedcond.augment import DSA, DSAParams
from fedcond.distill.base import Callbacks, as_callbacks, register
from fedcond.distill.experts import ExpertConfig, ensure_experts
from fedcond.distill.functional import FlatNetwork
from fedcond.distill.loop import IterativeConfig, IterativeDistiller, RunSetup, Step
from fedcond.distill.matching import fresh_network
from fedcond.errors import FedcondError

GRADIENT_MODES = ("tesla", "unrolled")


@dataclass
class MTTConfig(IterativeConfig):
    """MTT settings. The paper (CIFAR-10, ZCA): IPC1 syn_steps 50 / max_start_epoch 2 /
    lr_lr 1e-7; IPC10 30 / 20 / 1e-5; IPC50 30 / 40 / 1e-5; expert_epochs 2, lr_teacher
    0.01, lr_images 1000 (ZCA) or 100, 5,000 iterations, experts trained 50 epochs. The
    defaults here are sized for digits on a CPU (about a minute including the experts).

    Attributes:
        syn_steps: student SGD steps per iteration (N).
        expert_epochs: epochs of expert training the N steps must match (M).
        max_start_epoch: latest expert epoch a student may start from.
        lr_teacher: the student's initial (learned) learning rate α.
        lr_lr: learning rate of α itself.
        batch_syn: synthetic images per student step (None: the whole set).
        gradient: ``"tesla"`` (constant memory in syn_steps) or ``"unrolled"``.
        experts_dir: folder of expert trajectories; missing experts are trained and
            stored there (None: trained in memory for this run only).
        num_experts, expert_train_epochs, expert_lr: the experts to use or train.
    """

    iterations: int = 100  # sized for a CPU (benchmarks/results/methods_digits.md)
    lr_images: float = 100.0
    momentum_images: float = 0.5
    syn_steps: int = 20
    expert_epochs: int = 2
    max_start_epoch: int = 5
    lr_teacher: float = 0.01
    lr_lr: float = 1e-6  # 1e-5 (paper, IPC10) drove α down 3x within 50 iterations on digits
    batch_syn: int | None = None
    gradient: str = "tesla"
    experts_dir: str | None = None
    num_experts: int = 5
    expert_train_epochs: int = 10
    expert_lr: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gradient not in GRADIENT_MODES:
            raise FedcondError(f"gradient must be one of {', '.join(GRADIENT_MODES)}, got {self.gradient!r}")
        if self.syn_steps < 1 or self.expert_epochs < 1 or self.max_start_epoch < 0:
            raise FedcondError("syn_steps and expert_epochs must be >= 1, max_start_epoch >= 0")
        if self.max_start_epoch + self.expert_epochs > self.expert_train_epochs:
            raise FedcondError(
                f"max_start_epoch + expert_epochs ({self.max_start_epoch} + {self.expert_epochs}) exceeds "
                f"the experts' {self.expert_train_epochs} epochs"
            )
        if self.lr_teacher <= 0 or self.lr_lr < 0:
            raise FedcondError("lr_teacher must be > 0 and lr_lr >= 0")
        if self.batch_syn is not None and self.batch_syn < 1:
            raise FedcondError(f"batch_syn must be >= 1, got {self.batch_syn}")

    def expert_config(self) -> ExpertConfig:
        """The experts this run matches (same model, augmentation and ZCA space)."""
        return ExpertConfig(model=self.model, num_experts=self.num_experts, epochs=self.expert_train_epochs,
                            lr=self.expert_lr, dsa=self.dsa, dsa_strategy=self.dsa_strategy, zca=self.zca,
                            zca_regularization=self.zca_regularization)


Labels = Callable[[], torch.Tensor]  # the synthetic labels, rebuilt (with a fresh graph) per call


@dataclass
class StudentPlan:
    """The random draws of one student run, fixed before either pass so both replay them."""

    batches: list[torch.Tensor]  # per step: indices into the synthetic set
    augment: list[DSAParams | None]  # per step: DSA draw (one per image)

    def batch(
        self, i: int, images: torch.Tensor, labels: torch.Tensor, dsa: DSA | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``i``'s (augmented) images and labels."""
        idx = self.batches[i]
        x = images[idx]
        if dsa is not None:
            x = dsa.apply(x, self.augment[i])
        return x, labels[idx]


def plan_student(num_images: int, steps: int, batch: int | None, dsa: DSA | None,
                 generator: torch.Generator, device: torch.device) -> StudentPlan:
    """Batches walk through random permutations of the set, as MTT's student does."""
    size = num_images if batch is None else min(batch, num_images)
    order: list[torch.Tensor] = []
    batches, augment = [], []
    for _ in range(steps):
        if sum(t.numel() for t in order) < size:
            order.append(torch.randperm(num_images, generator=generator))
        flat = torch.cat(order)
        batches.append(flat[:size].to(device))
        order = [flat[size:]]
        augment.append(dsa.sample_params(size, generator).to(device) if dsa is not None else None)
    return StudentPlan(batches, augment)

def trajectory_loss_tesla(student: FlatNetwork, start: torch.Tensor, target: torch.Tensor, lr: torch.Tensor,
                          images: torch.Tensor, labels: Labels, plan: StudentPlan,
                          dsa: DSA | None, leaves: list[torch.Tensor]) -> torch.Tensor:
    """Normalised trajectory distance; accumulates its gradient into ``leaves``' ``.grad``.

    ``images`` and ``labels()`` are functions of ``leaves`` (the synthetic tensors, the
    learned lr). Constant memory in the number of steps: see the module docstring.
    """
    alpha = lr.detach()
    # Pass 1: the student's run, no graph to the synthetic tensors.
    w, total = start.clone(), torch.zeros_like(start)
    with torch.no_grad():
        x_det, y_det = images.detach(), labels().detach()
    for i in range(len(plan.batches)):
        g = student.loss_gradient(w, *plan.batch(i, x_det, y_det, dsa), create_graph=False)
        total += g
        w = w - alpha * g
    scale = (start - target).pow(2).sum()
    loss = (w - target).pow(2).sum() / scale
    v = 2 * (w - target) / scale
    # dL/dα through w_N = θ_t - α Σ g_i (exact under the same first-order view).
    grad_lr = -(v * total).sum()
    lr.grad = grad_lr if lr.grad is None else lr.grad + grad_lr
    # Pass 2: replay; one step's graph at a time carries -α v back to that step's batch.
    w = start.clone()
    image_leaves = [t for t in leaves if t is not lr]
    for i in range(len(plan.batches)):
        # Labels are rebuilt per step: a graph shared by all steps would be freed by the first backward.
        g = student.loss_gradient(w, *plan.batch(i, images, labels(), dsa), create_graph=True)
        torch.autograd.backward(g, grad_tensors=-alpha * v, inputs=image_leaves)
        w = w - alpha * g.detach()
    return loss.detach()


def trajectory_loss_unrolled(student: FlatNetwork, start: torch.Tensor, target: torch.Tensor, lr: torch.Tensor,
                             images: torch.Tensor, labels: Labels, plan: StudentPlan,
                             dsa: DSA | None, leaves: list[torch.Tensor]) -> torch.Tensor:
    """The authors' way: one graph through all steps, exact gradient, memory linear in N."""
    w = start.clone().requires_grad_(True)
    y = labels()
    for i in range(len(plan.batches)):
        g = student.loss_gradient(w, *plan.batch(i, images, y, dsa), create_graph=True)
        w = w - lr * g
    loss = (w - target).pow(2).sum() / (start - target).pow(2).sum()
    torch.autograd.backward(loss, inputs=leaves)
    return loss.detach()


TRAJECTORY_LOSSES = {"tesla": trajectory_loss_tesla, "unrolled": trajectory_loss_unrolled}


@register("mtt")
class MTT(IterativeDistiller):
    """Trajectory matching with a learned student learning rate; see the module docstring."""

    config_class = MTTConfig

    def extras(self, config: MTTConfig) -> dict[str, tuple[torch.Tensor, float]]:
        """The student's learned learning rate α (recorded in the set as ``learned_lr``)."""
        return {"lr": (torch.tensor(config.lr_teacher), config.lr_lr)}

    def prepare(self, run: RunSetup, generator: torch.Generator, callbacks: Callbacks) -> Step:
        """Train or load the experts, then MTT's step: one student run matched to one expert."""
        config, device, dataset, state = run.config, run.device, run.dataset, run.state
        # Experts train from their own seeds: the run's generator is not touched.
        hooks = as_callbacks(callbacks)

        def expert_progress(done: int, total: int) -> None:
            for cb in hooks:
                cb.on_experts(done, total)

        experts = [t.to(device) for t in ensure_experts(dataset, config.expert_config(), config.experts_dir,
                                                        expert_progress)]
        student = FlatNetwork(fresh_network(config.model, dataset, torch.Generator().manual_seed(0), device).train())
        dsa = DSA(config.dsa_strategy) if config.dsa else None
        trajectory_loss = TRAJECTORY_LOSSES[config.gradient]

        def step(_: int) -> torch.Tensor:
            expert = experts[int(torch.randint(len(experts), (1,), generator=generator))]
            t = int(torch.randint(config.max_start_epoch + 1, (1,), generator=generator))
            plan = plan_student(state.images.shape[0], config.syn_steps, config.batch_syn, dsa, generator, device)
            lr = state.extras["lr"]
            leaves = [state.images, lr] + ([state.label_logits] if state.label_logits is not None else [])
            state.optimizer.zero_grad(set_to_none=True)
            loss = trajectory_loss(student, expert[t], expert[t + config.expert_epochs], lr, state.images, run.labels,
                                   plan, dsa, leaves)
            state.optimizer.step()
            with torch.no_grad():
                lr.clamp_(min=1e-8)  # a negative step size would train the student backwards
            return loss

        return step
