"""``DistilledReplayPlugin``: Avalanche's ``ReplayPlugin`` with a distilled buffer.

Usage, in any Avalanche script::

    strategy = Naive(model=model, optimizer=opt, criterion=CrossEntropyLoss(),
                     plugins=[DistilledReplayPlugin(mem_size=100, method="dm")])

It *is* a ``ReplayPlugin`` (same ``mem_size``, ``batch_size``, ``batch_size_mem``,
``task_balanced_dataloader``, ``storage_policy`` arguments) whose default storage policy
is a :class:`~fedcond.continual.buffer.DistilledBuffer`. While an experience trains,
Avalanche's ``ReplayDataLoader`` concatenates a memory batch to every training batch and
the strategy's own criterion sees both. What happens after the experience is the ``mode``:

- ``retrain`` (default): the experience is distilled before training and the strategy
  trains on the buffer (as in GDumb: the real data's own training would be discarded);
  then the model goes back to its initial weights and is trained on the
  balanced buffer alone with the evaluation protocol (:mod:`fedcond.continual.buffer_training`),
  GDumb-style. The distilled images were made to train a fresh network, so this is the
  use that lets their information count (measured: ``benchmarks/results/continual_*``).
- ``finetune``: the same training on the buffer, starting from the weights the experience
  left (balanced fine-tuning; keeps what the real data of the last experience taught).
- ``replay``: nothing more: plain experience replay with distilled exemplars.

Soft labels (methods that learn label distributions) cannot ride in that batch — the
collate step needs one label type — so they take the path Avalanche's regularisation
plugins use for their penalties: in ``before_backward`` a memory batch of
``batch_size_mem`` synthetic images is drawn (from an explicit generator) and
``soft_weight * soft_cross_entropy(model(x_mem), soft_targets)`` is added to the loss.
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
from fedcond.precision import check_precision, resolve_precision
from fedcond.train import soft_cross_entropy

MODES = ("retrain", "finetune", "replay")


class DistilledReplayPlugin(ReplayPlugin):
    """Replay a class-balanced buffer of distilled images while training later experiences.

    Args:
        mem_size: buffer budget in images (all classes together).
        batch_size, batch_size_mem, task_balanced_dataloader: as in Avalanche's ``ReplayPlugin``.
        storage_policy: a custom ``ExemplarsBuffer`` (default: a ``DistilledBuffer``
            built from the arguments below).
        method: fedcond distillation method (``dm``, ``dc``, ``dsa``, ``herding``, ...).
        ipc: images distilled per new class (None = its share of ``mem_size``).
        iterations: distillation iterations for iterative methods (None: for DM the buffer's
            default, :data:`~fedcond.continual.buffer.BUFFER_DM_DEFAULTS`, 40 iterations of 16
            real images per class at lr 3, about an epoch's cost per experience; for other
            methods their own default).
        batch_real: real images per class per distillation iteration (None: as ``iterations``).
        precision: ``auto`` (default), ``float32`` or ``bfloat16`` (:mod:`fedcond.precision`): the
            arithmetic of the distillation (DM's embedding passes) and of the buffer training;
            ``auto`` is bfloat16 on devices with fast bfloat16 (AMX CPUs, CUDA GPUs), else float32.
        model: network the distiller uses for features / matching.
        distill_options: further method options (e.g. ``{"lr_images": 1.0}``).
        rebalance: how old classes shrink when new ones arrive: ``nested``, ``subselect`` or
            ``redistill`` (see :class:`~fedcond.continual.buffer.DistillSpec`).
        mode: what follows each experience: ``retrain``, ``finetune`` or ``replay`` (above).
        buffer_training: the recipe of ``retrain`` / ``finetune`` (default: the evaluation
            protocol, 300 epochs of SGD lr 0.01 on the buffer).
        soft_weight: weight of the soft-target replay loss (soft-label buffers only).
        num_classes: classes of the stream (None = from the benchmark / labels).
        mean, std: normalisation of the inputs, recorded with the buffer's images.
        seed: seed of distillation and of soft-replay sampling.
    """

    def __init__(
        self,
        mem_size: int = 200,
        batch_size: int | None = None,
        batch_size_mem: int | None = None,
        task_balanced_dataloader: bool = False,
        storage_policy: ExemplarsBuffer | None = None,
        *,
        method: str = "dm",
        ipc: int | None = None,
        iterations: int | None = None,
        batch_real: int | None = None,
        precision: str = "auto",
        model: str = "convnet",
        distill_options: dict[str, Any] | None = None,
        rebalance: str = "nested",
        mode: str = "retrain",
        buffer_training: BufferTraining | None = None,
        soft_weight: float = 1.0,
        num_classes: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise FedcondError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if storage_policy is None:
            spec = DistillSpec(method=method, ipc=ipc, iterations=iterations, batch_real=batch_real,
                               precision=precision, model=model, options=dict(distill_options or {}),
                               rebalance=rebalance, seed=seed)
            storage_policy = DistilledBuffer(mem_size, spec, num_classes=num_classes, mean=mean, std=std)
        super().__init__(mem_size=mem_size, batch_size=batch_size, batch_size_mem=batch_size_mem,
                         task_balanced_dataloader=task_balanced_dataloader, storage_policy=storage_policy)
        self.soft_weight = soft_weight
        self.mode = mode
        self.precision = check_precision(precision)
        self._device: torch.device = torch.device("cpu")  # the strategy's, once training starts
        self.buffer_training = buffer_training or BufferTraining()
        self._generator = torch.Generator().manual_seed(seed)
        self._train_generator = torch.Generator().manual_seed(seed + 1)
        self._initial_state: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The plugin's state for resuming: buffer, generators, initial weights."""
        return {"buffer": self.storage_policy.state_dict(), "generator": self._generator.get_state(),
                "train_generator": self._train_generator.get_state(), "initial_state": self._initial_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s contents."""
        self.storage_policy.load_state_dict(state["buffer"])
        self._generator.set_state(state["generator"])
        self._train_generator.set_state(state["train_generator"])
        self._initial_state = state["initial_state"]

    def before_training(self, strategy: Any, **kwargs: Any) -> None:
        """Remember the model's initial weights once (``retrain`` starts from them each time)."""
        self._device = torch.device(strategy.device)
        if self.mode == "retrain" and self._initial_state is None:
            self._initial_state = copy.deepcopy(strategy.model.state_dict())

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

    def after_train_dataset_adaptation(self, strategy: Any, **kwargs: Any) -> None:
        """``retrain``: distill the experience first and let the strategy train on the buffer.

        Training on the experience itself would be thrown away by the restart from the
        initial weights, so, as Avalanche's GDumb does, the strategy's training set becomes
        the buffer (on MNIST this saves an epoch over 12,000 images per experience).
        """
        if self.mode != "retrain":
            return
        self.storage_policy.post_adapt(strategy, strategy.experience)
        strategy.adapted_dataset = self.storage_policy.buffer

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        """Put the experience into the buffer (``retrain``: done before training), then
        (``retrain``/``finetune``) train on the buffer."""
        if self.mode != "retrain":
            # ReplayPlugin calls the deprecated ``update``; call the 0.6 hook directly.
            self.storage_policy.post_adapt(strategy, strategy.experience)
        if self.mode == "replay" or len(self.storage_policy.buffer) == 0:
            return
        if self.mode == "retrain" and self._initial_state is not None:
            strategy.model.load_state_dict(self._initial_state)
        images, labels = _memory_tensors(self.storage_policy)
        train_on_memory(strategy.model, images, labels, self.buffer_training, self._train_generator, strategy.device,
                        precision=resolve_precision(self.precision, strategy.device))

    def settings(self) -> dict[str, Any]:
        """What this plugin runs, as recorded with results: mode, buffer training recipe,
        precision as resolved on the strategy's device, and the distillation's method, ipc,
        iterations, batch_real, lr_images and network (as the method's config resolves them)."""
        out: dict[str, Any] = {"mem_size": self.mem_size, "mode": self.mode,
                               "precision": resolve_precision(self.precision, self._device),
                               "buffer_training": dataclasses.asdict(self.buffer_training)}
        spec = getattr(self.storage_policy, "spec", None)
        if isinstance(spec, DistillSpec):
            config = spec.make(1)[1].to_dict()
            out.update({"method": spec.method, "ipc": spec.ipc, "model": spec.model, "rebalance": spec.rebalance,
                        "iterations": config.get("iterations"), "batch_real": config.get("batch_real"),
                        "lr_images": config.get("lr_images"), "options": dict(spec.options)})
        return out


def _memory_tensors(policy: ExemplarsBuffer) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a storage policy: a DistilledBuffer's tensors (soft labels when it
    has them), else its Avalanche dataset read once (a user's own storage policy)."""
    if isinstance(policy, DistilledBuffer):
        return policy.images, policy.soft_targets if policy.soft_targets is not None else policy.targets
    images, labels, _ = experience_tensors(policy.buffer)
    return images, labels
