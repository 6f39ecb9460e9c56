"""Iterative distillation: the shared config, the method base class and the loop.

A method subclasses :class:`IterativeDistiller` and supplies ``prepare(run) -> step``,
where ``step(iteration) -> loss`` is one iteration of its own algorithm, drawing all
randomness from the run's generator; the base class starts the run (:func:`start_run`),
and :func:`run_loop` repeats the step and adds progress callbacks, periodic snapshots and
checkpoints (:mod:`fedcond.distill.checkpoint`): a killed run restarted with the same
config and checkpoint directory continues bit for bit where it stopped.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from fedcond.augment import DEFAULT_STRATEGY, parse_strategy
from fedcond.data import ImageDataset
from fedcond.distill.base import (
    Callbacks,
    DistillConfig,
    Distiller,
    DistillInputs,
    as_callbacks,
    emit,
    generator_seed,
    make_set,
    overrides,
)
from fedcond.distill.checkpoint import (
    CHECKPOINT_NAME,
    MethodState,
    load_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from fedcond.distill.matching import initial_label_logits, initial_synthetic
from fedcond.errors import FedcondError
from fedcond.sampling import ClassSampler
from fedcond.synthetic import SyntheticSet
from fedcond.zca import zca_dataset


@dataclass
class IterativeConfig(DistillConfig):
    """Settings shared by the iterative methods (DM, DC, DSA, MTT, FRePo, KIP, DD).

    Attributes:
        iterations: outer iterations (each with a freshly initialised network).
        lr_images, momentum_images: the step on the synthetic images.
        optimizer: ``"sgd"`` (with ``momentum_images``; DM/DC/DSA/MTT) or ``"adam"``
            (KIP, FRePo and DD optimise their images with Adam).
        batch_real: real images per class per iteration.
        init: ``"real"`` (random real images) or ``"noise"`` (standard normal).
        dsa: match through differentiable siamese augmentation with ``dsa_strategy``.
        learn_labels: learn soft labels (logits initialised to ``label_init_scale`` *
            one-hot, SGD with ``lr_labels``); the set then stores (N, K) probabilities.
        zca: distill (and evaluate) in ZCA-whitened space, ``zca_regularization`` added
            to the eigenvalues, fitted on the training split.
        checkpoint_dir: save/resume here (None: no checkpoints).
        checkpoint_every: iterations between checkpoints (one is also written at the end).
        log_every: iterations between progress callbacks (each costs one host sync).
        eval_every: iterations between snapshots handed to the callbacks'
            ``Callback.on_snapshot`` (0: never).
    """

    iterations: int = 200
    lr_images: float = 1.0
    momentum_images: float = 0.5
    optimizer: str = "sgd"
    batch_real: int = 256
    init: str = "real"
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    learn_labels: bool = False
    label_init_scale: float = 5.0
    lr_labels: float = 1.0
    zca: bool = False
    zca_regularization: float = 0.1
    checkpoint_dir: str | None = None
    checkpoint_every: int = 100
    log_every: int = 10
    eval_every: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 0:
            raise FedcondError(f"iterations must be >= 0, got {self.iterations}")
        if self.lr_images <= 0 or self.lr_labels <= 0:
            raise FedcondError("lr_images and lr_labels must be > 0")
        if not 0 <= self.momentum_images < 1:
            raise FedcondError(f"momentum_images must be in [0, 1), got {self.momentum_images}")
        if self.optimizer not in ("sgd", "adam"):
            raise FedcondError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.batch_real < 1:
            raise FedcondError(f"batch_real must be >= 1, got {self.batch_real}")
        if self.init not in ("real", "noise"):
            raise FedcondError(f"init must be 'real' or 'noise', got {self.init!r}")
        if self.zca_regularization <= 0:
            raise FedcondError(f"zca_regularization must be > 0, got {self.zca_regularization}")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.eval_every < 0:
            raise FedcondError("checkpoint_every and log_every must be >= 1, eval_every >= 0")
        parse_strategy(self.dsa_strategy)


@dataclass
class RunState:
    """The trainable synthetic tensors and their optimiser.

    ``extras`` are further learned tensors a method needs (MTT's and DD's learning
    rates); they share the optimiser, each with its own learning rate, are saved in
    checkpoints like the images, and recorded in the set as ``learned_<name>``.
    """

    images: torch.Tensor  # leaf, requires grad
    label_logits: torch.Tensor | None  # leaf or None (hard labels)
    optimizer: torch.optim.Optimizer
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def create(
        cls, images: torch.Tensor, label_logits: torch.Tensor | None, config: IterativeConfig,
        extras: dict[str, tuple[torch.Tensor, float]] | None = None,
    ) -> "RunState":
        """Leaf copies of the tensors and one optimiser over them.

        ``extras`` maps a name to (initial tensor, its learning rate).
        """
        images = images.detach().clone().requires_grad_(True)
        groups: list[dict[str, Any]] = [{"params": [images], "lr": config.lr_images}]
        if label_logits is not None:
            label_logits = label_logits.detach().clone().requires_grad_(True)
            groups.append({"params": [label_logits], "lr": config.lr_labels})
        leaves = {}
        for name, (tensor, lr) in (extras or {}).items():
            leaves[name] = tensor.detach().clone().requires_grad_(True)
            groups.append({"params": [leaves[name]], "lr": lr})
        if config.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(groups, lr=config.lr_images)
        else:
            opt = torch.optim.SGD(groups, lr=config.lr_images, momentum=config.momentum_images)
        return cls(images, label_logits, opt, leaves)

    def labels(self, hard: torch.Tensor) -> torch.Tensor:
        """What the set stores: ``hard`` ids, or the learned label probabilities (N, K)."""
        if self.label_logits is None:
            return hard
        return torch.softmax(self.label_logits.detach(), dim=1)


def finish_set(dataset: ImageDataset, state: RunState, syn_class: torch.Tensor, classes: torch.Tensor,
               config: IterativeConfig, seed: int, method: str) -> SyntheticSet:
    """The current synthetic tensors as a SyntheticSet that records the classes it covers
    and the learned extras (``learned_lr``: a number, ``learned_step_sizes``: a list)."""
    factor = getattr(config, "factor", 1)  # multi-formation (DM): the images are mosaics
    sset = make_set(dataset, state.images, state.labels(syn_class), method, config, seed, factor=factor)
    sset.config["present_classes"] = classes.tolist()
    for name, tensor in state.extras.items():
        sset.config[f"learned_{name}"] = tensor.detach().cpu().tolist()
    return sset


@dataclass
class RunSetup:
    """What every iterative method starts from (see :func:`start_run`).

    Attributes:
        dataset: the data on the run's device, ZCA-whitened if the config asks.
        sampler: class-balanced real batches over the present classes.
        syn_class: (N,) class id of each synthetic image, grouped by class.
        state: the learned tensors and their optimiser.
        method_state: what the method keeps besides them, checkpointed with them (set by
            its ``prepare``; FRePo's pool of networks).
        inputs: what the caller gave besides the data (``inputs.initial``: the set the run
            refines; None: it started from ``config.init``).
    """

    method: str
    config: Any  # the method's IterativeConfig subclass
    device: torch.device
    seed: int
    dataset: ImageDataset
    sampler: ClassSampler
    syn_class: torch.Tensor
    state: RunState
    method_state: MethodState | None = None
    inputs: DistillInputs = field(default_factory=DistillInputs)

    def labels(self) -> torch.Tensor:
        """The labels training steps use: class ids, or the learned probabilities (with graph)."""
        if self.state.label_logits is None:
            return self.syn_class
        return torch.softmax(self.state.label_logits, dim=1)

    def snapshot(self) -> SyntheticSet:
        """The current synthetic tensors as a SyntheticSet."""
        return finish_set(self.dataset, self.state, self.syn_class, self.sampler.classes, self.config, self.seed,
                          self.method)


Step = Callable[[int], torch.Tensor]  # one iteration -> its detached scalar loss


class IterativeDistiller(Distiller):
    """Base of the iterative methods: run set-up (:func:`start_run`), the loop with
    checkpoints, progress and snapshots (:func:`run_loop`), the final set.

    A method sets ``config_class`` and implements :meth:`prepare`; learned tensors beyond
    the images and labels come from :meth:`extras`, state to checkpoint goes in
    ``run.method_state``. Every iterative method can refine a starting set
    (``DistillInputs.initial``, see :func:`start_run`).
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"initial"})

    def extras(self, config: Any) -> dict[str, tuple[torch.Tensor, float]]:
        """Further learned tensors, name -> (initial value, learning rate); none by default."""
        return {}

    @abstractmethod
    def prepare(self, run: RunSetup, generator: torch.Generator, callbacks: Callbacks) -> Step:
        """Build the method's per-run state and return its ``step``."""

    def _distill(self, dataset: ImageDataset, config: Any, generator: torch.Generator, device: torch.device,
                 callbacks: Callbacks, inputs: DistillInputs) -> SyntheticSet:
        """Only the present classes of ``dataset``, up to ``ipc`` images each."""
        run = start_run(self.name, dataset, config, generator, device, self.extras(config), inputs)
        step = self.prepare(run, generator, callbacks)
        fingerprint = run_fingerprint(self.name, config, run.seed, run.dataset.name, int(run.syn_class.numel()))
        run_loop(step, run.state, config, generator, fingerprint, callbacks, run.snapshot, run.method_state)
        return run.snapshot()


def start_run(
    method: str, dataset: ImageDataset, config: IterativeConfig, generator: torch.Generator,
    device: torch.device | str, extras: dict[str, tuple[torch.Tensor, float]] | None = None,
    inputs: DistillInputs | None = None,
) -> RunSetup:
    """The shared start of an iterative method: the data on the device (in ZCA space if
    asked), the sampler, the initial synthetic images and labels, their optimiser.

    ``extras`` (e.g. learned learning rates) are moved to the device and optimised too.
    ``inputs.initial``: start from this set's images and (hard) labels instead of
    ``config.init``; only the classes it shares with the data are sampled, its images of
    other classes have no row (``syn_class`` keeps their ids) and stay as they are.
    """
    inputs = inputs or DistillInputs()
    initial = inputs.initial
    device = torch.device(device)
    seed = generator_seed(generator)
    dataset = dataset.to(device)
    if config.zca:
        dataset = zca_dataset(dataset, config.zca_regularization)
    if initial is None:
        sampler = ClassSampler.from_labels(dataset.train_labels, dataset.num_classes)
        images, syn_class = initial_synthetic(dataset, sampler, config.ipc, config.init, generator)
    else:
        if config.zca:
            raise FedcondError("a starting set cannot be refined in ZCA space: distill it with zca off")
        if tuple(initial.image_shape) != tuple(dataset.image_shape) or initial.num_classes != dataset.num_classes:
            raise FedcondError(f"the starting set ({tuple(initial.image_shape)}, {initial.num_classes} classes) does "
                               f"not fit the data ({tuple(dataset.image_shape)}, {dataset.num_classes} classes)")
        if initial.factor != getattr(config, "factor", 1):
            raise FedcondError(f"the starting set is made of factor-{initial.factor} mosaics but the run's factor is "
                               f"{getattr(config, 'factor', 1)}: refine it with the same factor")
        syn_class = initial.hard_labels.to(device)
        sampler = ClassSampler.from_labels(dataset.train_labels, dataset.num_classes, only=syn_class.unique())
        images = initial.images.float().to(device)
    logits = (
        initial_label_logits(syn_class, dataset.num_classes, config.label_init_scale) if config.learn_labels else None
    )
    extras = {name: (t.to(device), lr) for name, (t, lr) in (extras or {}).items()}
    state = RunState.create(images, logits, config, extras)
    return RunSetup(method, config, device, seed, dataset, sampler, syn_class, state, inputs=inputs)


def run_loop(
    step: Callable[[int], torch.Tensor],
    state: RunState,
    config: IterativeConfig,
    generator: torch.Generator,
    fingerprint: str,
    callbacks: Callbacks = None,
    snapshot: Callable[[], SyntheticSet] | None = None,
    method_state: MethodState | None = None,
) -> list[float]:
    """Run ``step`` for iterations ``[done, config.iterations)``, resuming from a checkpoint.

    ``step`` returns a detached scalar loss tensor; losses are summed on the device and
    read (one host sync) only every ``log_every`` iterations. ``method_state`` is checkpointed
    with the synthetic tensors (see :class:`MethodState`). Returns the logged mean losses.
    """
    total = config.iterations
    callbacks = as_callbacks(callbacks)
    # A snapshot copies the set to the host: make one only for callbacks that read it.
    readers = [cb for cb in callbacks if overrides(cb, "on_snapshot")] if snapshot is not None else []
    path = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir else None
    start = 0
    if path is not None and path.exists():
        start = load_checkpoint(path, state, generator, fingerprint, method_state)
        if start > total:
            raise FedcondError(f"checkpoint {path} is already at iteration {start}, past the requested {total}")
    logged: list[float] = []
    running, count = None, 0
    for it in range(start, total):
        loss = step(it)
        running = loss if running is None else running + loss
        count += 1
        done = it + 1
        # Checkpoint before callbacks run, so an interrupt raised in one loses nothing.
        if path is not None and (done % config.checkpoint_every == 0 or done == total):
            save_checkpoint(path, state, generator, done, fingerprint, method_state)
        if done % config.log_every == 0 or done == total:
            logged.append(float(running) / count)  # the only host sync of the loop
            emit(callbacks, done, total, {"loss": logged[-1]})
            running, count = None, 0
        if readers and config.eval_every and done % config.eval_every == 0:
            current = snapshot()  # type: ignore[misc]  (readers is empty without a snapshot)
            for cb in readers:
                cb.on_snapshot(done, current)
    return logged
