"""Expert trajectories for trajectory matching (MTT): train on real data, store, reuse.

An expert is a network trained on the real training split with plain SGD; its
*trajectory* is its flat parameter vector after every epoch (epoch 0 = initialisation),
an ``(epochs + 1, P)`` float32 tensor. A folder of experts holds

- ``manifest.json``: the :class:`ExpertConfig`, the data set, image shape, class count
  and parameter count — what a distillation run checks before using the folder;
- ``expert_000.safetensors``, ...: one trajectory each, written atomically when done;
- ``expert_003.partial.safetensors``: the trajectory so far of the expert in training,
  plus its shuffling generator's state, rewritten after every epoch.

Training is resumable: experts already on disk are skipped, and with ``momentum == 0``
(the MTT default; SGD then has no state besides the weights) a partial expert continues
from its last epoch and ends bit for bit where an uninterrupted one would. Files are
safetensors, so nothing is unpickled when loading.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from fedcond.augment import DEFAULT_STRATEGY, DSA, parse_strategy
from fedcond.data import ImageDataset
from fedcond.distill.base import describe_difference
from fedcond.distill.functional import FlatNetwork
from fedcond.errors import FedcondError
from fedcond.models import get_model
from fedcond.runinfo import write_bytes_atomic
from fedcond.train import accuracy, train_model

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class ExpertConfig:
    """How experts are trained (MTT's buffer settings: SGD lr 0.01, no momentum, no
    weight decay, DSA augmentation; the paper trains 100 experts for 50 epochs on CIFAR-10).

    Attributes:
        seed: expert ``i`` is initialised and shuffled from ``seed + i``, so a folder
            can grow by raising ``num_experts`` and runs with other distillation seeds
            share it.
    """

    model: str = "convnet"
    num_experts: int = 5
    epochs: int = 15
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa: bool = True
    dsa_strategy: str = DEFAULT_STRATEGY
    zca: bool = False
    zca_regularization: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_experts < 1 or self.epochs < 1:
            raise FedcondError("num_experts and epochs must be >= 1")
        if self.lr <= 0 or self.batch_size < 1:
            raise FedcondError("expert lr must be > 0 and batch_size >= 1")
        if self.dsa:
            parse_strategy(self.dsa_strategy)

    def identity(self) -> dict[str, Any]:
        """What two folders must agree on to hold interchangeable experts (not their count)."""
        return {k: v for k, v in asdict(self).items() if k != "num_experts"}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ExpertConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FedcondError(f"unknown expert option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def _network(dataset: ImageDataset, config: ExpertConfig, seed: int) -> torch.nn.Module:
    c, h, w = dataset.image_shape
    return get_model(config.model, c, dataset.num_classes, (h, w), seed=seed).to(dataset.device)


def _manifest(dataset: ImageDataset, config: ExpertConfig, num_params: int) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "dataset": dataset.name,
        "image_shape": list(dataset.image_shape),
        "num_classes": dataset.num_classes,
        "num_params": num_params,
        "config": config.identity(),
    }


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    write_bytes_atomic(path, save({k: v.contiguous().cpu() for k, v in tensors.items()}, metadata=metadata))


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise FedcondError(f"cannot read expert file {path}: {err}; delete it to retrain") from None


def train_expert(
    dataset: ImageDataset,
    config: ExpertConfig,
    index: int,
    partial: Path | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[torch.Tensor, float]:
    """Train expert ``index``; return its trajectory ``(epochs + 1, P)`` and test accuracy.

    With ``partial``, progress is saved there after every epoch and picked up from there.
    """
    seed = config.seed + index
    net = _network(dataset, config, seed)
    flat = FlatNetwork(net)
    generator = torch.Generator().manual_seed(seed)
    points = [flat.flatten().cpu()]
    if partial is not None and partial.exists() and config.momentum == 0:
        saved = _read(partial)
        points = list(saved["trajectory"].unbind(0))
        generator.set_state(saved["generator"])
        flat.load(points[-1].to(dataset.device))
    augment = DSA(config.dsa_strategy) if config.dsa else None
    for epoch in range(len(points) - 1, config.epochs):
        # One epoch per call: constant lr (no decay), so consecutive calls are one run.
        losses: list[float] = []
        train_model(
            net,
            dataset.train_images,
            dataset.train_labels,
            1,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            batch_size=config.batch_size,
            generator=generator,
            augment=augment,
            lr_decay_at_half=False,
            on_epoch=lambda _, loss, losses=losses: losses.append(loss),
        )
        points.append(flat.flatten().cpu())
        if partial is not None:
            _atomic_save({"trajectory": torch.stack(points), "generator": generator.get_state()}, partial, {})
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return torch.stack(points), accuracy(net, dataset.test_images, dataset.test_labels)


def ensure_experts(
    dataset: ImageDataset,
    config: ExpertConfig,
    directory: str | os.PathLike | None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> list[torch.Tensor]:
    """The ``config.num_experts`` trajectories, training (and storing) those not on disk yet.

    ``dataset`` must already be in the space experts train in (ZCA-whitened if
    ``config.zca``). ``directory=None`` keeps them in memory only. ``on_epoch(done,
    total)`` reports epochs trained across all experts in this call.
    """
    template = FlatNetwork(_network(dataset, config, config.seed))
    manifest = _manifest(dataset, config, template.size)
    folder = Path(directory) if directory is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST
        if path.exists():
            found = json.loads(path.read_text())
            if found != manifest:
                raise FedcondError(f"experts in {folder} were trained differently "
                                   f"({describe_difference(found, manifest)}); use another folder")
        else:
            path.write_text(json.dumps(manifest, indent=2))
    todo = [
        i for i in range(config.num_experts) if folder is None or not (folder / f"expert_{i:03d}.safetensors").exists()
    ]
    total, done = len(todo) * config.epochs, 0
    trajectories: dict[int, torch.Tensor] = {}
    for i in todo:
        partial = folder / f"expert_{i:03d}.partial.safetensors" if folder is not None else None

        def tick(_: int, __: float) -> None:
            nonlocal done
            done += 1
            if on_epoch is not None:
                on_epoch(done, total)

        trajectory, test_acc = train_expert(dataset, config, i, partial, tick)
        trajectories[i] = trajectory
        if folder is not None:
            _atomic_save({"trajectory": trajectory}, folder / f"expert_{i:03d}.safetensors",
                         {"test_accuracy": f"{test_acc:.6f}", "index": str(i)})
            if partial is not None and partial.exists():
                partial.unlink()
    for i in range(config.num_experts):
        if i not in trajectories:
            trajectories[i] = _read(folder / f"expert_{i:03d}.safetensors")["trajectory"]  # type: ignore[operator]
        if tuple(trajectories[i].shape) != (config.epochs + 1, template.size):
            raise FedcondError(f"expert {i} in {folder} has shape {tuple(trajectories[i].shape)}, "
                               f"expected {(config.epochs + 1, template.size)}; delete it to retrain")
    return [trajectories[i] for i in range(config.num_experts)]


def expert_accuracies(directory: str | os.PathLike) -> list[float]:
    """Test accuracies recorded in a folder's expert files (for reports)."""
    out = []
    for path in sorted(Path(directory).glob("expert_[0-9][0-9][0-9].safetensors")):
        with safe_open(str(path), "pt") as f:
            out.append(float(f.metadata()["test_accuracy"]))
    return out
