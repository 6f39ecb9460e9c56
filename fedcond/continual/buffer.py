"""``DistilledBuffer``: an Avalanche storage policy whose exemplars are distilled images.

After each experience (``post_adapt``, the hook Avalanche's own ``ReplayPlugin`` calls),
the experience's data is distilled per class with any fedcond ``Distiller`` and the result
goes into the buffer. The budget is ``max_size`` images in all, split evenly over the
classes seen so far (:func:`fedcond.continual.budget.class_quotas`); when new classes
arrive, old classes are cut down to their new quota — by herding sub-selection of their
synthetic images, or, with ``rebalance="redistill"``, by distilling their synthetic images
again into fewer (the real data of past experiences is gone by then).

``buffer`` is an Avalanche classification dataset of ``(x, y, t)`` items with ``targets``
and ``targets_task_labels``, so Avalanche's ``ReplayDataLoader`` mixes it into training
batches exactly as it does raw exemplars. Soft labels, when a method makes them, are kept
aside in ``soft_targets`` (aligned with ``buffer``) because a mini-batch mixing int labels
and label vectors cannot be collated; :class:`~fedcond.continual.plugin.DistilledReplayPlugin`
replays them with a soft-target loss.

With the method option ``factor`` > 1 (multi-formation, :mod:`fedcond.formation`) each
stored image is a mosaic of ``factor**2`` tiles: the budget counts stored images, so the
memory's bytes are those of ``max_size`` images, while replay and buffer training see the
decoded tiles (``factor**2`` training images per stored one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from avalanche.training.storage_policy import ExemplarsBuffer
from torch.utils.data import Dataset

from fedcond.continual.budget import class_quotas, subselect
from fedcond.continual.experience import experience_dataset, experience_tensors, num_classes_of
from fedcond.distill import make_distiller
from fedcond.errors import FedcondError
from fedcond.formation import decode, repeat_per_tile
from fedcond.precision import DEFAULT_PRECISION, check_precision
from fedcond.synthetic import SyntheticSet

Key = tuple[int, int]  # (task label, class id): class ids may repeat across tasks
REBALANCE = ("subselect", "redistill", "nested")
# DM's settings in the buffer unless given (spec fields or options): sized so that an
# experience's distillation costs about what an epoch over it does (DM's own defaults are a
# distillation's: 100 iterations of 256 real images per class at lr 1). Chosen at the knee
# of accuracy against seconds on a user's Avalanche script (SplitMNIST, SimpleMLP, memory 20;
# benchmarks/results/continual_plugin_cost.md): with few iterations a larger step moves the
# images as far as many small ones (lr 3: +3-4 points at 20 iterations; lr 10 overshoots),
# and 16-32 real images per class do as well as 64-256 at so few steps. 0.770 over 2 seeds
# at 2.2x the CPU seconds of Avalanche's ReplayPlugin (0.460); DM's defaults gave 0.789 at
# about 100x.
BUFFER_DM_DEFAULTS: dict[str, Any] = {"iterations": 40, "batch_real": 16, "lr_images": 3.0}


@dataclass
class DistillSpec:
    """How the buffer distills each experience (a typed config, not a dict of strings).

    Attributes:
        method: a registered fedcond method (``dm``, ``dc``, ``dsa``, ``herding``, ...).
        ipc: images distilled per new class; None = the class's current quota. The buffer
            stores ``min(ipc, quota)`` per class, so a smaller ipc leaves budget unused.
        iterations: for iterative methods (None: DM's buffer default, :data:`BUFFER_DM_DEFAULTS`,
            for ``dm``; the method's own default for the others).
        batch_real: real images per class per iteration, for iterative methods (None: as
            ``iterations``).
        precision: ``auto``, ``float32`` or ``bfloat16`` (:mod:`fedcond.precision`), for
            methods with a ``precision`` option (DM); ``auto`` resolves on the run's device.
        model: network the method uses for features / matching.
        options: further method options (fields of the method's config; unknown ones are an
            error listing the known ones, see :func:`fedcond.distill.make_distiller`).
        rebalance: how old classes shrink when new classes arrive. ``subselect``: herding
            on the synthetic images; ``redistill``: distill the old synthetic images again
            into fewer (DM with them as the "real" data); ``nested``: distill each new class
            in two independent sets, a core of the quota it will have once every class of
            the stream is in (``max_size // num_classes``, at least 1) and the rest of its
            current quota, and shrink by dropping rest images first, so the survivors were
            optimised to stand alone.
        seed: base seed; experience i distills with ``seed + 1000 * i``.
    """

    method: str = "dm"
    ipc: int | None = None
    iterations: int | None = None
    batch_real: int | None = None
    precision: str = DEFAULT_PRECISION
    model: str = "convnet"
    options: dict[str, Any] = field(default_factory=dict)
    rebalance: str = "nested"
    seed: int = 0

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.batch_real is not None and self.batch_real < 1:
            raise FedcondError(f"batch_real must be >= 1, got {self.batch_real}")
        if self.rebalance not in REBALANCE:
            raise FedcondError(f"rebalance must be one of {', '.join(REBALANCE)}, got {self.rebalance!r}")
        if self.ipc is not None and self.ipc < 1:
            raise FedcondError(f"ipc must be >= 1, got {self.ipc}")
        if self.factor != 1 and self.rebalance == "redistill":
            # redistilling takes the stored images as real data; mosaics are not images of a class
            raise FedcondError("rebalance 'redistill' does not take multi-formation sets (option factor): "
                               "use 'nested' or 'subselect'")
        # An unknown method or option fails at construction, not after an experience.
        self.make(self.ipc or 1)

    @property
    def factor(self) -> int:
        """Tiles per side of each stored image (the method option ``factor``; 1: plain images)."""
        return int(self.options.get("factor", 1))

    def make(self, ipc: int):
        """The method's distiller and config for ``ipc`` images per class: ``options`` over DM's
        buffer defaults (:data:`BUFFER_DM_DEFAULTS`, for ``dm``), and this spec's own fields
        where the method has them; a field here gives way to the same name in ``options``
        (``options={"batch_real": 128}`` works as before), except ipc, model and iterations."""
        defaults = dict(BUFFER_DM_DEFAULTS) if self.method == "dm" else {}
        dm_iterations = defaults.pop("iterations", None)
        fixed = {"ipc": ipc, "model": self.model,
                 "iterations": self.iterations if self.iterations is not None else dm_iterations}
        fixed.update({k: v for k, v in (("batch_real", self.batch_real), ("precision", self.precision))
                      if v is not None and k not in self.options})
        defaults = {k: v for k, v in defaults.items() if k not in fixed}  # a field given here wins
        return make_distiller(self.method, {**defaults, **self.options}, fixed=fixed)


@dataclass
class _Entry:
    """One class's synthetic images; labels are int64 ids (n,) or soft rows (n, K)."""

    images: torch.Tensor
    labels: torch.Tensor


class _Items(Dataset):
    """(image, label) items; labels come back as the experience's own label type so that
    Avalanche's default collate can stack buffer items with training items."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, tensor_labels: bool) -> None:
        self.images, self.tensor_labels = images, tensor_labels
        self.targets = targets.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        y = self.targets[i]
        return self.images[i], (torch.tensor(y) if self.tensor_labels else y)


class DistilledBuffer(ExemplarsBuffer):
    """Class-balanced replay memory of distilled images, ``max_size`` images in all.

    Args:
        max_size: the budget in images.
        spec: how to distill (:class:`DistillSpec`).
        num_classes: classes of the whole stream; None = the benchmark's ``n_classes``
            when the experience knows it, else the largest label seen + 1.
        mean, std: normalisation of the experience tensors (recorded in the SyntheticSet;
            zeros/ones when unknown).
        storage_dtype: image dtype used when counting bytes (``float32``, ``float16``, ``uint8``).
    """

    def __init__(self, max_size: int, spec: DistillSpec | None = None, num_classes: int | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 storage_dtype: str = "float32") -> None:
        if max_size < 0:
            raise FedcondError(f"mem_size must be >= 0, got {max_size}")
        super().__init__(max_size)
        self.spec = spec or DistillSpec()
        self.num_classes = num_classes
        self.mean, self.std, self.storage_dtype = mean, std, storage_dtype
        self.entries: dict[Key, _Entry] = {}
        self.soft_targets: torch.Tensor | None = None
        self._tensor_labels = True
        self._experiences_seen = 0
        self.cores: dict[Key, int] = {}  # "nested": images per class in the standalone core
        self.distill_seconds: list[float] = []  # wall time of each experience's update (the stated cost)

    def _core_size(self, n: int) -> int:
        """Images of the standalone core (``nested``; else all ``n``): the final per-class quota."""
        if self.spec.rebalance != "nested" or not self.num_classes:
            return n
        return max(1, min(n, self.max_size // self.num_classes))

    # ------------------------------------------------------------------ Avalanche hooks
    def post_adapt(self, agent_state: Any, exp: Any) -> None:
        """Distill ``exp``'s classes into the buffer and rebalance the per-class budget."""
        started = time.perf_counter()
        x, y, t = experience_tensors(exp.dataset)
        if x.shape[0] == 0:
            return
        first = exp.dataset.eval()[0][1]
        self._tensor_labels = isinstance(first, torch.Tensor)
        k = num_classes_of(exp, y, self.num_classes)
        self.num_classes = max(k, self.num_classes or 0)
        new_keys = {(int(ti), int(yi)) for ti, yi in zip(t.tolist(), y.tolist())}
        quotas = class_quotas(self.max_size, set(self.entries) | new_keys)
        device = getattr(agent_state, "device", "cpu")
        seed = self.spec.seed + 1000 * self._experiences_seen
        self._experiences_seen += 1
        self._shrink(quotas, device, seed + 1)
        for task in sorted({key[0] for key in new_keys}):
            mask = t == task
            classes = sorted(c for (tk, c) in new_keys if tk == task)
            want = max(quotas[(task, c)] for c in classes)
            n = want if self.spec.ipc is None else min(self.spec.ipc, want)
            if n == 0:
                continue
            core = self._core_size(n)
            sset = self.distill(x[mask], y[mask], core, device, seed)
            rest = self.distill(x[mask], y[mask], n - core, device, seed + 500) if n > core else None
            for c in classes:
                rows = sset.hard_labels == c
                entry = _Entry(sset.images[rows], sset.labels[rows])
                if rest is not None:  # core first: _cut keeps a prefix for "nested"
                    more = rest.hard_labels == c
                    entry = _Entry(
                        torch.cat([entry.images, rest.images[more]]), _cat_labels(entry.labels, rest.labels[more])
                    )
                    self.cores[(task, c)] = int(rows.sum())
                self._merge((task, c), entry, quotas[(task, c)])
        self._rebuild()
        self.distill_seconds.append(time.perf_counter() - started)

    def resize(self, strategy: Any, new_size: int) -> None:
        """Change the budget; classes are cut down to their new quotas at once."""
        self.max_size = new_size
        self._shrink(class_quotas(new_size, self.entries), getattr(strategy, "device", "cpu"), self.spec.seed)
        self._rebuild()

    # ------------------------------------------------------------------ distillation
    def distill(self, images: torch.Tensor, labels: torch.Tensor, ipc: int, device: Any, seed: int) -> SyntheticSet:
        """Run the configured method on (images, labels) with ``ipc`` images per class."""
        spec = self.spec
        distiller, config = spec.make(ipc)
        data = experience_dataset(images, labels, self.num_classes or int(labels.max()) + 1, self.mean, self.std)
        sset = distiller.distill(data.to(device), config, torch.Generator().manual_seed(seed), device)
        if sset.labels_per_tile:  # entries keep one label row per stored image
            raise FedcondError(f"method {spec.method!r} gave soft labels per tile, which the buffer does not keep")
        return sset.detached()

    def _shrink(self, quotas: dict[Key, int], device: Any, seed: int) -> None:
        for key in list(self.entries):
            entry, quota = self.entries[key], quotas.get(key, 0)
            if quota == 0:
                del self.entries[key]
                self.cores.pop(key, None)
            elif entry.images.shape[0] > quota:
                self.entries[key] = self._cut(key, entry, quota, device, seed)

    def _cut(self, key: Key, entry: _Entry, quota: int, device: Any, seed: int) -> _Entry:
        if self.spec.rebalance == "redistill" and entry.labels.dim() == 1:
            sset = self.distill(entry.images, entry.labels, quota, device, seed + key[1])
            if sset.num_images == quota:
                return _Entry(sset.images, sset.labels.to(entry.labels.dtype))
        core = self.cores.get(key, entry.images.shape[0])
        if self.spec.rebalance == "nested" and core < entry.images.shape[0]:
            if quota <= core:
                self.cores[key] = quota
                return _Entry(*subselect(entry.images[:core], entry.labels[:core], quota))
            rest = subselect(entry.images[core:], entry.labels[core:], quota - core)
            return _Entry(torch.cat([entry.images[:core], rest[0]]), _cat_labels(entry.labels[:core], rest[1]))
        return _Entry(*subselect(entry.images, entry.labels, quota))

    def _merge(self, key: Key, new: _Entry, quota: int) -> None:
        old = self.entries.get(key)
        if old is not None:  # a class seen again (data-incremental streams): pool, then cut
            new = _Entry(torch.cat([old.images, new.images]), _cat_labels(old.labels, new.labels))
            self.cores.pop(key, None)
        if quota > 0:
            self.entries[key] = (self._cut(key, new, quota, "cpu", 0) if key in self.cores
                                 else _Entry(*subselect(new.images, new.labels, quota)))

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Everything the buffer holds, as tensors and plain values (``torch.save``-safe)."""
        keys = sorted(self.entries)
        return {"max_size": self.max_size, "num_classes": self.num_classes, "tensor_labels": self._tensor_labels,
                "experiences_seen": self._experiences_seen, "keys": [list(k) for k in keys],
                "images": [self.entries[k].images for k in keys], "labels": [self.entries[k].labels for k in keys],
                "cores": [[k[0], k[1], n] for k, n in sorted(self.cores.items())],
                "distill_seconds": list(self.distill_seconds)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s contents (the distillation spec is the constructor's)."""
        self.max_size, self.num_classes = int(state["max_size"]), state["num_classes"]
        self._tensor_labels, self._experiences_seen = bool(state["tensor_labels"]), int(state["experiences_seen"])
        self.entries = {
            (int(k[0]), int(k[1])): _Entry(x, y) for k, x, y in zip(state["keys"], state["images"], state["labels"])
        }
        self.cores = {(int(t), int(c)): int(n) for t, c, n in state["cores"]}
        self.distill_seconds = [float(v) for v in state.get("distill_seconds", [])]
        self._rebuild()

    # ------------------------------------------------------------------ views
    def _stored(self) -> tuple[list[Key], torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Stored images of every class in key order, their soft labels (None: all hard) and
        hard labels, one row per stored image."""
        keys = sorted(self.entries)
        images = torch.cat([self.entries[k].images for k in keys])
        labels = [self.entries[k].labels for k in keys]
        if not any(lab.dim() == 2 for lab in labels):
            return keys, images, None, torch.cat(labels)
        width = max([self.num_classes or 0] + [lab.shape[1] for lab in labels if lab.dim() == 2])
        soft = torch.cat([_as_soft(lab, width) for lab in labels])
        return keys, images, soft, soft.argmax(dim=1)

    def _rebuild(self) -> None:
        """The replay view: ``images``/``targets``/``task_labels``/``soft_targets`` and the
        Avalanche dataset ``buffer``, one row per training image (a mosaic's decoded tiles)."""
        if not self.entries:
            self.soft_targets = None
            return
        keys, stored, soft, hard = self._stored()
        f = self.spec.factor
        images = decode(stored, f)
        self.soft_targets = None if soft is None else repeat_per_tile(soft, f)
        targets = repeat_per_tile(hard, f)
        tasks = [k[0] for k in keys for _ in range(self.entries[k].images.shape[0] * f * f)]
        items = _Items(images, targets, self._tensor_labels)
        self.buffer = _make_taskaware_classification_dataset(items, task_labels=tasks, targets=items.targets)
        self.images, self.targets, self.task_labels = images, targets, torch.tensor(tasks)

    def class_counts(self) -> dict[Key, int]:
        """Stored images per (task, class): the budget's unit (a mosaic counts once)."""
        return {k: int(e.images.shape[0]) for k, e in sorted(self.entries.items())}

    def synthetic_set(self) -> SyntheticSet:
        """The buffer's stored contents as one SyntheticSet (for bytes, saving, plots); a
        mosaic buffer's set has the spec's ``factor``, so ``decoded()`` gives the replay view."""
        if not self.entries:
            raise FedcondError("the buffer is empty: train on at least one experience first")
        _, stored, soft, hard = self._stored()
        k = self.num_classes or int(hard.max()) + 1
        channels = stored.shape[1]
        return SyntheticSet(
            images=stored, labels=soft if soft is not None else hard, classes=tuple(str(i) for i in range(k)),
            mean=self.mean or (0.0,) * channels, std=self.std or (1.0,) * channels,
            method=self.spec.method, ipc=max(self.class_counts().values()), dataset="continual-buffer",
            seed=self.spec.seed, storage_dtype=self.storage_dtype, factor=self.spec.factor,
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the buffer's contents as a serialised SyntheticSet (0 when empty)."""
        return self.synthetic_set().nbytes if self.entries else 0


def _as_soft(labels: torch.Tensor, width: int) -> torch.Tensor:
    if labels.dim() == 1:
        return torch.nn.functional.one_hot(labels, width).float()
    return torch.nn.functional.pad(labels.float(), (0, width - labels.shape[1]))


def _cat_labels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dim() == b.dim() == 1:
        return torch.cat([a, b])
    width = max(lab.shape[1] for lab in (a, b) if lab.dim() == 2)
    return torch.cat([_as_soft(a, width), _as_soft(b, width)])
