"""The distilled replay plugins: a storage policy of distilled images and small plugins that use it.

Usage, in any Avalanche script::

    strategy = Naive(model=model, optimizer=opt, criterion=CrossEntropyLoss(),
                     plugins=[DistilledReplayPlugin(mem_size=100)])

As in Avalanche (``ReplayPlugin(mem_size, storage_policy=...)``), *what* the memory keeps
is a storage policy and *when* it is used is a plugin. The policy is a
:class:`~fedcond.continual.buffer.DistilledBuffer` (an Avalanche ``ExemplarsBuffer``) whose
distillation settings are given once, as a :class:`~fedcond.continual.buffer.DistillSpec`.
Each way of using the memory is its own plugin, and each adds hooks to the one before:

- :class:`DistilledMixPlugin` (``mode`` ``replay``, the runner's ``*-mix``): plain
  experience replay, distilled exemplars mixed into every mini-batch; nothing more.
- :class:`DistilledFinetunePlugin` (``finetune``, ``*-finetune``): then, after each
  experience, training on the balanced buffer from the weights the experience left
  (keeps what the experience's real data taught).
- :class:`DistilledReplayPlugin` (``retrain``, ``*-replay``): the experience is distilled
  *before* training and the strategy trains on the buffer (as in GDumb: the real data's own
  training would be discarded); then the model restarts from its initial weights and trains
  on the buffer alone.

``DistilledReplayPlugin`` is the default (the README's): the distilled images were made to
train a fresh network, and restarting is what lets their information count (measured:
``benchmarks/results/continual_*``). The memory training is the evaluation protocol's
(:mod:`fedcond.continual.buffer_training`). The random- and herding-image controls are the
same plugins holding a ``DistilledBuffer`` whose spec names ``random`` or ``herding``.

While an experience trains, Avalanche's ``ReplayDataLoader`` concatenates a memory batch to
every training batch and the strategy's own criterion sees both. Soft labels (methods that
learn label distributions) cannot ride in that batch — the collate step needs one label
type — so they take the path Avalanche's regularisation plugins use for their penalties: in
``before_backward`` a memory batch of ``batch_size_mem`` synthetic images is drawn (from an
explicit generator) and ``soft_weight * soft_cross_entropy(model(x_mem), soft_targets)`` is
added to the loss.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import ExemplarsBuffer

from fedcond.continual.buffer import DistilledBuffer, DistillSpec
from fedcond.continual.buffer_training import BufferTraining, train_on_memory
from fedcond.continual.experience import experience_tensors
from fedcond.errors import FedcondError
from fedcond.precision import DEFAULT_PRECISION, check_precision, resolve_precision
from fedcond.train import soft_cross_entropy


class DistilledMixPlugin(ReplayPlugin):
    """Replay a class-balanced buffer of distilled images in every mini-batch (mode ``replay``).

    The base of the other two plugins: each of them replays the same way while an experience
    trains. Avalanche's ``ReplayPlugin`` arguments, plus:

    Args:
        mem_size, batch_size, batch_size_mem, task_balanced_dataloader: as in ``ReplayPlugin``.
        storage_policy: the memory; default a :class:`~fedcond.continual.buffer.DistilledBuffer`
            of ``mem_size`` images distilled as ``spec`` says. Any ``ExemplarsBuffer`` works
            (its ``max_size`` must be ``mem_size``, as Avalanche asserts).
        spec: how the default policy distills (default ``DistillSpec(seed=seed)``: DM); give
            it or ``storage_policy``, not both.
        soft_weight: weight of the soft-target replay loss (soft-label buffers only).
        seed: seed of the plugin's own draws (soft-replay batches, the memory training);
            None: the policy's spec's seed (0 for a policy without one).
    """

    mode = "replay"

    def __init__(
        self,
        mem_size: int = 200,
        batch_size: int | None = None,
        batch_size_mem: int | None = None,
        task_balanced_dataloader: bool = False,
        storage_policy: ExemplarsBuffer | None = None,
        *,
        spec: DistillSpec | None = None,
        soft_weight: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if storage_policy is None:
            storage_policy = DistilledBuffer(mem_size, spec or DistillSpec(seed=seed or 0))
        elif spec is not None:
            raise FedcondError("give the plugin a spec or a storage_policy, not both: the policy has its own spec")
        super().__init__(mem_size=mem_size, batch_size=batch_size, batch_size_mem=batch_size_mem,
                         task_balanced_dataloader=task_balanced_dataloader, storage_policy=storage_policy)
        own = getattr(storage_policy, "spec", None)
        if seed is None:
            seed = own.seed if isinstance(own, DistillSpec) else 0
        # One arithmetic for the distillation and the memory training: the spec's
        self.precision = check_precision(own.precision if isinstance(own, DistillSpec) else DEFAULT_PRECISION)
        self.soft_weight = soft_weight
        self.seed = seed
        self._device: torch.device = torch.device("cpu")  # the strategy's, once training starts
        self._generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        """The plugin's state for resuming: buffer and generators (and, retraining, initial weights)."""
        return {"buffer": self.storage_policy.state_dict(), "generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s contents."""
        self.storage_policy.load_state_dict(state["buffer"])
        self._generator.set_state(state["generator"])

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Note the strategy's device (``settings`` resolves ``auto`` precision on it)."""
        self._device = torch.device(strategy.device)

    @property
    def _soft(self) -> bool:
        return getattr(self.storage_policy, "soft_targets", None) is not None

    def before_training_exp(self, strategy: Any, num_workers: int = 0, shuffle: bool = True,
                            drop_last: bool = False, **kwargs: Any) -> None:
        """Hard labels: Avalanche's replay data loader. Soft labels: leave the loader alone."""
        if self._soft:
            return
        super().before_training_exp(strategy, num_workers=num_workers, shuffle=shuffle, drop_last=drop_last, **kwargs)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        """Soft labels: add the soft-target loss of one memory batch to ``strategy.loss``."""
        if not self._soft:
            return
        buf = self.storage_policy
        n = len(buf.targets)
        size = self.batch_size_mem or strategy.train_mb_size
        idx = torch.randint(0, n, (min(size, n),), generator=self._generator)
        x = buf.images[idx].to(strategy.device)
        t = buf.task_labels[idx].to(strategy.device)
        out = avalanche_forward(strategy.model, x, t)
        target = buf.soft_targets[idx].to(strategy.device)
        if out.shape[1] < target.shape[1]:  # incremental heads: score only the units that exist
            target = target[:, : out.shape[1]]
        elif out.shape[1] > target.shape[1]:  # a head wider than the classes seen: no mass there
            target = torch.nn.functional.pad(target, (0, out.shape[1] - target.shape[1]))
        strategy.loss = strategy.loss + self.soft_weight * soft_cross_entropy(out, target)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Put the experience into the buffer."""
        # ReplayPlugin calls the policy's deprecated ``update``; call the 0.6 hook directly.
        self.storage_policy.post_adapt(strategy, strategy.experience)

    def settings(self) -> dict[str, Any]:
        """What this plugin runs, as recorded with results: mode, precision as resolved on the
        strategy's device, the memory training's recipe (plugins that train on the memory),
        and the distillation's method, ipc, iterations, batch_real, lr_images and network (as
        the method's config resolves them)."""
        out: dict[str, Any] = {"mem_size": self.mem_size, "mode": self.mode,
                               "precision": resolve_precision(self.precision, self._device), **self._training()}
        spec = getattr(self.storage_policy, "spec", None)
        if isinstance(spec, DistillSpec):
            config = spec.make(1)[1].to_dict()
            out.update({"method": spec.method, "ipc": spec.ipc, "model": spec.model, "rebalance": spec.rebalance,
                        "iterations": config.get("iterations"), "batch_real": config.get("batch_real"),
                        "lr_images": config.get("lr_images"), "options": dict(spec.options)})
        return out

    def _training(self) -> dict[str, Any]:
        return {}  # no memory training here


class DistilledFinetunePlugin(DistilledMixPlugin):
    """:class:`DistilledMixPlugin`, then after each experience training on the balanced buffer
    from the weights the experience left (mode ``finetune``).

    Args:
        buffer_training: the memory training's recipe (default: the evaluation protocol,
            300 epochs of SGD lr 0.01 on the buffer); the rest as :class:`DistilledMixPlugin`.
    """

    mode = "finetune"

    def __init__(self, mem_size: int = 200, batch_size: int | None = None, batch_size_mem: int | None = None,
                 task_balanced_dataloader: bool = False, storage_policy: ExemplarsBuffer | None = None, *,
                 spec: DistillSpec | None = None, buffer_training: BufferTraining | None = None,
                 soft_weight: float = 1.0, seed: int | None = None) -> None:
        super().__init__(mem_size, batch_size, batch_size_mem, task_balanced_dataloader, storage_policy,
                         spec=spec, soft_weight=soft_weight, seed=seed)
        self.buffer_training = buffer_training or BufferTraining()
        # its own stream of draws, so the memory training does not shift soft replay's batches
        self._train_generator = torch.Generator().manual_seed(self.seed + 1)

    def state_dict(self) -> dict[str, Any]:
        """:meth:`DistilledMixPlugin.state_dict` and the memory training's generator."""
        return {**super().state_dict(), "train_generator": self._train_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s contents."""
        super().load_state_dict(state)
        self._train_generator.set_state(state["train_generator"])

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Put the experience into the buffer, then train on the buffer."""
        super().after_training_exp(strategy, **kwargs)
        self._train_on_memory(strategy)

    def _train_on_memory(self, strategy: Any) -> None:
        if len(self.storage_policy.buffer) == 0:
            return
        images, labels = _memory_tensors(self.storage_policy)
        train_on_memory(strategy.model, images, labels, self.buffer_training, self._train_generator, strategy.device,
                        precision=resolve_precision(self.precision, strategy.device))

    def _training(self) -> dict[str, Any]:
        return {"buffer_training": dataclasses.asdict(self.buffer_training)}


class DistilledReplayPlugin(DistilledFinetunePlugin):
    """The default: each experience is distilled before training, the strategy trains on the
    buffer, and then the model restarts from its initial weights and trains on the balanced
    buffer alone, GDumb-style (mode ``retrain``). Arguments as :class:`DistilledFinetunePlugin`.
    """

    mode = "retrain"
    _initial_state: dict[str, torch.Tensor] | None = None  # taken in the first before_training

    def state_dict(self) -> dict[str, Any]:
        """:meth:`DistilledFinetunePlugin.state_dict` and the initial weights."""
        return {**super().state_dict(), "initial_state": self._initial_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s contents."""
        super().load_state_dict(state)
        self._initial_state = state["initial_state"]

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Remember the model's initial weights once: every retraining starts from them."""
        super().before_training(strategy, **kwargs)
        if self._initial_state is None:
            self._initial_state = copy.deepcopy(strategy.model.state_dict())

    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """Distill the experience first and let the strategy train on the buffer.

        Training on the experience itself would be thrown away by the restart from the
        initial weights, so, as Avalanche's GDumb does, the strategy's training set becomes
        the buffer (on MNIST this saves an epoch over 12,000 images per experience).
        """
        self.storage_policy.post_adapt(strategy, strategy.experience)
        strategy.adapted_dataset = self.storage_policy.buffer

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Restart from the initial weights and train on the buffer (filled before training)."""
        if len(self.storage_policy.buffer) == 0:
            return
        if self._initial_state is not None:
            strategy.model.load_state_dict(self._initial_state)
        self._train_on_memory(strategy)


PLUGINS: dict[str, type[DistilledMixPlugin]] = {
    "retrain": DistilledReplayPlugin, "finetune": DistilledFinetunePlugin, "replay": DistilledMixPlugin,
}
MODES = tuple(PLUGINS)


def distilled_plugin(mode: str, **kwargs: Any) -> DistilledMixPlugin:
    """The plugin of ``mode`` (``retrain``, ``finetune`` or ``replay``) built with ``kwargs``;
    ``buffer_training`` is dropped for ``replay``, which does not train on the memory."""
    if mode not in PLUGINS:
        raise FedcondError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if PLUGINS[mode] is DistilledMixPlugin:
        kwargs.pop("buffer_training", None)
    return PLUGINS[mode](**kwargs)


def _memory_tensors(policy: ExemplarsBuffer) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a storage policy: a DistilledBuffer's tensors (soft labels when it
    has them), else its Avalanche dataset read once (a user's own storage policy)."""
    if isinstance(policy, DistilledBuffer):
        return policy.images, policy.soft_targets if policy.soft_targets is not None else policy.targets
    images, labels, _ = experience_tensors(policy.buffer)
    return images, labels
