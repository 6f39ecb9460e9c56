"""The compared strategies, each one of Avalanche's own templates or plugins.

``naive`` (fine-tuning), ``replay`` (Avalanche ``ReplayPlugin`` with a class-balanced
buffer, the same balancing as ours), ``gdumb``, ``icarl``, ``der`` and ``der++`` (Avalanche's
``DER``, dark experience replay: replays stored logits, weighed by ``der_alpha``; ``der++``
adds the stored labels' cross-entropy, weighed by ``der_beta``, as in Buzzega et al. 2020),
``joint`` (upper bound) and the distilled memories (:mod:`fedcond.continual.plugin`: one
:class:`~fedcond.continual.buffer.DistilledBuffer` storage policy, used by one of three plugins):
``*-replay`` (``DistilledReplayPlugin``, mode ``retrain``: train a fresh model on the memory
after each experience), ``*-finetune`` (``DistilledFinetunePlugin``: the same training from
the current weights) and ``*-mix`` (``DistilledMixPlugin``: classic replay, memory images
mixed into every mini-batch, nothing after), where ``*`` is ``distilled`` (the distillation
``method``) or one of its controls, ``random`` (random real images) and ``herding``: a policy
of the same budget and formation (the mosaic ``factor``) in the same plugin,
so a distilled memory's gain stands beside what real images in the same place give.

One recipe (:class:`fedcond.recipe.Recipe`) trains every one of them: SGD with the recipe's
momentum and weight decay for every optimiser, and the recipe's augmentation on every
training mini-batch (:class:`BatchAugmentation`, replayed rows included) as well as in the
training on a memory (gdumb and the plugin's ``retrain`` / ``finetune``: ``buffer_epochs`` of
SGD at ``buffer_lr``, lr / 10 at half with the ``step-half`` schedule). Learning rate, epochs
and memory batch size are tuned per strategy on validation data (``StrategySettings``) and
recorded with every run. Published methods keep what makes them themselves: iCaRL classifies
by nearest class mean of its exemplars' features and distils its old outputs; DER/DER++
replay logits (Avalanche stores them after each experience, not as seen in training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import LRSchedulerPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.supervised import DER, GDumb, ICaRL, JointTraining, Naive
from torch import nn

from fedcond.continual.buffer import DistilledBuffer, DistillSpec
from fedcond.continual.buffer_training import BufferTraining
from fedcond.continual.plugin import distilled_plugin
from fedcond.errors import FedcondError
from fedcond.precision import DEFAULT_PRECISION, autocast, resolve_precision
from fedcond.recipe import Recipe

DISTILLED_MODES = {"distilled-replay": "retrain", "distilled-finetune": "finetune", "distilled-mix": "replay"}
# The controls of a distilled memory: random real images and herding, in the same plugin and mode
CONTROL_METHODS = ("random", "herding")
CONTROL_MODES = {
    f"{m}-{name.split('-', 1)[1]}": mode for m in CONTROL_METHODS for name, mode in DISTILLED_MODES.items()
}
BUFFER_STRATEGIES = {**DISTILLED_MODES, **CONTROL_MODES}  # name -> the plugin's mode
STRATEGIES = ("naive", "replay", "gdumb", "icarl", "der", "der++", *BUFFER_STRATEGIES, "joint")
MEMORY_STRATEGIES = ("replay", "gdumb", "icarl", "der", "der++", *BUFFER_STRATEGIES)
# What a published method does differently on purpose (stated beside it in reports)
ON_PURPOSE = {
    "icarl": "iCaRL's own parts (on purpose): nearest-mean-of-exemplars classifier, distillation of old outputs",
    "der": "DER's own part (on purpose): replays stored logits (MSE, alpha), stored after each experience",
    "der++": "DER++'s own parts (on purpose): replays stored logits (alpha) and labels (beta)",
    "gdumb": "GDumb (on purpose): trains only on its class-balanced memory, from scratch after each experience",
    "joint": "joint (upper bound): all experiences at once",
}


def buffer_method(name: str, method: str) -> str:
    """The memory's method of a buffer strategy: a control's own, else the distillation ``method``."""
    prefix = name.split("-", 1)[0]
    return prefix if prefix in CONTROL_METHODS else method


@dataclass
class StrategySettings:
    """Everything one strategy run needs besides the model and the data."""

    name: str
    mem_size: int
    lr: float
    epochs: int
    batch_size: int = 32
    batch_size_mem: int | None = None
    # every optimiser's momentum and weight decay, and the augmentation of every training batch
    recipe: Recipe = field(default_factory=Recipe)
    channels: int = 1  # of the images: resolves the recipe's "auto" augmentation
    # training on the memory alone (gdumb, *-replay, *-finetune)
    buffer_epochs: int = 300
    buffer_lr: float = 0.01
    # der / der++: weights of the replayed logits' MSE (alpha) and, der++ only, labels'
    # cross-entropy (beta); Avalanche's defaults (DER++ as in Buzzega et al. 2020); der runs beta 0
    der_alpha: float = 0.1
    der_beta: float = 0.5
    # distilled replay only
    method: str = "dm"
    ipc: int | None = None
    iterations: int | None = None
    distill_model: str = "convnet"
    distill_options: dict[str, Any] | None = None
    # every strategy's training and the distillation (fedcond.precision; the runner records it resolved)
    precision: str = DEFAULT_PRECISION
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
    recipe = s.recipe if isinstance(s.recipe, Recipe) else Recipe.from_json(s.recipe)
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    precision = resolve_precision(s.precision, device)
    common = dict(train_mb_size=s.batch_size, train_epochs=s.epochs, eval_mb_size=512,
                  device=device, evaluator=evaluator)
    strategy = _build(s, recipe, model, opt, common, precision)
    augment = recipe.augment_strategy(s.channels)
    if augment is not None:  # every strategy's training mini-batches, before autocast
        strategy.plugins.append(BatchAugmentation(augment, seed=s.seed + 2))
    if precision != "float32":  # Avalanche's own training loop, in the same arithmetic as ours
        strategy.plugins.append(AutocastPlugin(precision, device))
    return strategy


def memory_training(s: StrategySettings, recipe: Recipe) -> BufferTraining:
    """The recipe of training on a memory (gdumb, the plugin's retrain / finetune)."""
    return BufferTraining.from_recipe(recipe, s.channels, epochs=s.buffer_epochs, lr=s.buffer_lr)


def _build(s: StrategySettings, recipe: Recipe, model: nn.Module, opt: torch.optim.Optimizer,
           common: dict[str, Any], precision: str) -> Any:
    ce = nn.CrossEntropyLoss()
    if s.name == "naive":
        return Naive(model=model, optimizer=opt, criterion=ce, **common)
    if s.name == "joint":
        return JointTraining(model=model, optimizer=opt, criterion=ce, **common)
    if s.name == "gdumb":  # the batch augmentation is added with every strategy's (build_strategy)
        memory = memory_training(s, recipe)
        opt = torch.optim.SGD(
            model.parameters(), lr=memory.lr, momentum=memory.momentum, weight_decay=memory.weight_decay
        )
        milestones = [max(1, memory.epochs // 2)] if memory.lr_decay_at_half else []
        decay = LRSchedulerPlugin(torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1))
        common.update(train_mb_size=memory.batch_size, train_epochs=memory.epochs)
        return GDumb(model=model, optimizer=opt, criterion=ce, mem_size=s.mem_size, plugins=[decay], **common)
    if s.name == "icarl":
        return ICaRL(feature_extractor=_Embed(model), classifier=model.classifier, optimizer=opt,
                     memory_size=s.mem_size, buffer_transform=None, fixed_memory=True, **common)
    if s.name in ("der", "der++"):
        # Avalanche's DER replays only while its memory holds a whole memory batch (its default: the
        # training batch), so a memory smaller than the batch would never replay: cap the batch at it
        mem_batch = s.batch_size_mem or min(s.batch_size, s.mem_size)
        return _DER(model=model, optimizer=opt, criterion=ce, mem_size=s.mem_size, batch_size_mem=mem_batch,
                    alpha=s.der_alpha, beta=s.der_beta if s.name == "der++" else 0.0, **common)
    if s.name == "replay":
        policy = ClassBalancedBuffer(max_size=s.mem_size, adaptive_size=True)
        plugin: ReplayPlugin = ReplayPlugin(mem_size=s.mem_size, batch_size_mem=s.batch_size_mem, storage_policy=policy)
        return Naive(model=model, optimizer=opt, criterion=ce, plugins=[plugin], **common)
    method = buffer_method(s.name, s.method)
    options = dict(s.distill_options or {})
    if method != s.method:  # a control: the distilled memory's formation (mosaic factor), nothing of its method
        options = {k: v for k, v in options.items() if k == "factor"}
    # The memory is the storage policy; the mode picks the plugin that uses it (controls included)
    spec = DistillSpec(method=method, ipc=s.ipc, iterations=s.iterations if method == s.method else None,
                       precision=precision, model=s.distill_model, options=options, rebalance=s.rebalance, seed=s.seed)
    policy = DistilledBuffer(s.mem_size, spec, num_classes=s.num_classes, mean=s.mean, std=s.std)
    plugin = distilled_plugin(BUFFER_STRATEGIES[s.name], mem_size=s.mem_size, batch_size_mem=s.batch_size_mem,
                              storage_policy=policy, buffer_training=memory_training(s, recipe), seed=s.seed)
    return Naive(model=model, optimizer=opt, criterion=ce, plugins=[plugin], **common)


class BatchAugmentation(SupervisedPlugin):
    """The recipe's DSA augmentation on every training mini-batch of an Avalanche strategy.

    Runs before each training forward pass on ``strategy.mbatch``'s images (replay plugins
    have already joined their memory rows to the batch); draws come from its own generator.
    """

    def __init__(self, augment: str, seed: int = 0) -> None:
        super().__init__()
        from fedcond.augment import DSA  # noqa: PLC0415  (kept beside the recipe's own use of it)

        self.augment = augment
        self.dsa = DSA(strategy=augment)
        self.generator = torch.Generator().manual_seed(seed)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` augmented (one draw per image)."""
        return self.dsa(x, self.generator)

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        strategy.mbatch[0] = self.apply(strategy.mbatch[0])


class _DER(DER):
    """Avalanche's DER, whose replayed rows get the recipe's augmentation too: its
    ``_before_forward`` runs the plugins (the stream rows) before it prepends the memory rows."""

    def _before_forward(self, **kwargs: Any) -> None:
        super()._before_forward(**kwargs)
        aug = next((p for p in self.plugins if isinstance(p, BatchAugmentation)), None)
        if self.replay_loader is not None and aug is not None:
            n = self.batch_logits.shape[0]
            self.mbatch[0] = torch.cat([aug.apply(self.mbatch[0][:n]), self.mbatch[0][n:]])


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
