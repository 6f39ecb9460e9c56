"""The compared strategies, each one of Avalanche's own templates or plugins.

``naive`` (fine-tuning), ``replay`` (Avalanche ``ReplayPlugin`` with a class-balanced
buffer, the same balancing as ours), ``gdumb``, ``icarl``, ``der`` (Avalanche's ``DER``: dark
experience replay, which replays stored logits as well as labels; ``der_alpha`` weighs the
logit term, ``der_beta`` the label term, DER++), ``joint`` (upper bound) and
fedcond's distilled buffers, Naive + :class:`DistilledReplayPlugin` in one of its modes:
``distilled-replay`` (the plugin's default, ``retrain``: train a fresh model on the
distilled buffer after each experience), ``distilled-finetune`` (the same training from
the current weights) and ``distilled-mix`` (classic replay: buffer images mixed into
every mini-batch, nothing after). All get the same model, memory and SGD; learning rate,
epochs and memory batch size are tuned per strategy (``StrategySettings``) and recorded
with every run.

GDumb trains only on its memory, like ``distilled-replay``; to be a fair rival it gets
the same recipe (the evaluation protocol: ``buffer_epochs`` of SGD on the memory in
batches of up to 256, weight decay 5e-4, lr / 10 at half, ``buffer_augment`` DSA on every
batch), not 30 epochs of one mini-batch, which cannot train a ConvNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import LRSchedulerPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.supervised import DER, GDumb, ICaRL, JointTraining, Naive
from torch import nn

from fedcond.continual.buffer_training import BufferTraining, batch_augmentation_plugin
from fedcond.continual.plugin import DistilledReplayPlugin
from fedcond.errors import FedcondError
from fedcond.precision import autocast, resolve_precision

DISTILLED_MODES = {"distilled-replay": "retrain", "distilled-finetune": "finetune", "distilled-mix": "replay"}
STRATEGIES = ("naive", "replay", "gdumb", "icarl", "der", *DISTILLED_MODES, "joint")
MEMORY_STRATEGIES = ("replay", "gdumb", "icarl", "der", *DISTILLED_MODES)


@dataclass
class StrategySettings:
    """Everything one strategy run needs besides the model and the data."""

    name: str
    mem_size: int
    lr: float
    epochs: int
    batch_size: int = 32
    batch_size_mem: int | None = None
    momentum: float = 0.9
    # training on the memory alone (gdumb, distilled-replay, distilled-finetune)
    buffer_epochs: int = 300
    buffer_lr: float = 0.01
    buffer_augment: str = "crop_scale_rotate"
    # der only: weights of the replayed logits' MSE (alpha) and labels' cross-entropy (beta);
    # Avalanche's defaults, DER++ as in Buzzega et al. 2020
    der_alpha: float = 0.1
    der_beta: float = 0.5
    # distilled replay only
    method: str = "dm"
    ipc: int | None = None
    iterations: int | None = None
    distill_model: str = "convnet"
    distill_options: dict[str, Any] | None = None
    # every strategy's training and the distillation (fedcond.precision; the runner records it resolved)
    precision: str = "auto"
    rebalance: str = "nested"
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0


class _Embed(nn.Module):
    """A fedcond model's feature extractor as a module (iCaRL wants it split from the head)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


def build_strategy(settings: StrategySettings, model: nn.Module, evaluator: Any, device: torch.device) -> Any:
    """An Avalanche template for ``settings.name``, ready for ``train``/``eval``."""
    s = settings
    if s.name not in STRATEGIES:
        raise FedcondError(f"unknown strategy {s.name!r}: use any of {', '.join(STRATEGIES)}")
    if s.name in MEMORY_STRATEGIES and s.mem_size < 1:
        raise FedcondError(f"strategy {s.name} needs --mem-size >= 1")
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum)
    precision = resolve_precision(s.precision, device)
    common = dict(train_mb_size=s.batch_size, train_epochs=s.epochs, eval_mb_size=512,
                  device=device, evaluator=evaluator)
    strategy = _build(s, model, opt, common, precision)
    if precision != "float32":  # Avalanche's own training loop, in the same arithmetic as ours
        strategy.plugins.append(AutocastPlugin(precision, device))
    return strategy


def _build(s: StrategySettings, model: nn.Module, opt: torch.optim.Optimizer, common: dict[str, Any],
           precision: str) -> Any:
    ce = nn.CrossEntropyLoss()
    if s.name == "naive":
        return Naive(model=model, optimizer=opt, criterion=ce, **common)
    if s.name == "joint":
        return JointTraining(model=model, optimizer=opt, criterion=ce, **common)
    if s.name == "gdumb":
        recipe = BufferTraining(epochs=s.buffer_epochs, lr=s.buffer_lr, augment=s.buffer_augment)
        opt = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
        decay = LRSchedulerPlugin(torch.optim.lr_scheduler.MultiStepLR(opt, [max(1, recipe.epochs // 2)], 0.1))
        augment = batch_augmentation_plugin(recipe, seed=s.seed + 1)
        common.update(train_mb_size=recipe.batch_size, train_epochs=recipe.epochs)
        return GDumb(model=model, optimizer=opt, criterion=ce, mem_size=s.mem_size,
                     plugins=[decay] + ([augment] if augment is not None else []), **common)
    if s.name == "icarl":
        return ICaRL(feature_extractor=_Embed(model), classifier=model.classifier, optimizer=opt,
                     memory_size=s.mem_size, buffer_transform=None, fixed_memory=True, **common)
    if s.name == "der":
        return DER(model=model, optimizer=opt, criterion=ce, mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
                   alpha=s.der_alpha, beta=s.der_beta, **common)
    if s.name == "replay":
        policy = ClassBalancedBuffer(max_size=s.mem_size, adaptive_size=True)
        plugin: ReplayPlugin = ReplayPlugin(mem_size=s.mem_size, batch_size_mem=s.batch_size_mem, storage_policy=policy)
        return Naive(model=model, optimizer=opt, criterion=ce, plugins=[plugin], **common)
    plugin = DistilledReplayPlugin(
        mem_size=s.mem_size, batch_size_mem=s.batch_size_mem, method=s.method, ipc=s.ipc,
        iterations=s.iterations, model=s.distill_model, distill_options=s.distill_options,
        rebalance=s.rebalance, num_classes=s.num_classes, mean=s.mean, std=s.std, seed=s.seed,
        mode=DISTILLED_MODES[s.name], precision=precision,
        buffer_training=BufferTraining(epochs=s.buffer_epochs, lr=s.buffer_lr, augment=s.buffer_augment),
    )
    return Naive(model=model, optimizer=opt, criterion=ce, plugins=[plugin], **common)


class AutocastPlugin(SupervisedPlugin):
    """Avalanche's training loop under ``torch.autocast`` (bfloat16): the forward pass and
    the criterion; backward and the optimiser step stay outside, weights float32."""

    def __init__(self, precision: str, device: torch.device | str) -> None:
        super().__init__()
        self.precision, self.device = precision, device
        self._context: Any = None

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        self._context = autocast(self.precision, self.device)
        self._context.__enter__()

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None


def replay_buffer(strategy: Any) -> Any | None:
    """The storage policy of a strategy's replay plugin (None when it has none)."""
    for p in getattr(strategy, "plugins", []):
        if isinstance(p, ReplayPlugin):
            return p.storage_policy
    return None
