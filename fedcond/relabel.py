"""Knowledge-distillation soft labels: relabel a synthetic set with a trained teacher.

Hinton et al. (2015): a teacher network trained on the real data labels every synthetic
image with its temperature-softened class probabilities ``softmax(teacher(x) / T)``, and a
student learns those targets with the distillation loss at the same T
(:func:`fedcond.train.classification_loss`). The relabelled set records T in its config
(``kd_temperature``), so evaluation picks the right loss without being told.

Works on any method's output (hard or soft labels). A set distilled in ZCA-whitened space
must be labelled by a teacher trained in that same space: :func:`train_teacher` takes the
set's ZCA regularisation, and :func:`relabel` refuses a teacher from the other space.

Teachers are saved as a safetensors state dict with JSON metadata in the header (what
network, for which data set and image shape, its accuracy), never pickled.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from fedcond.data import ImageDataset
from fedcond.errors import FedcondError
from fedcond.models import get_model
from fedcond.runinfo import write_bytes_atomic
from fedcond.synthetic import SyntheticSet
from fedcond.train import Augment, accuracy, train_model
from fedcond.zca import zca_dataset, zca_regularization

TEACHER_FORMAT = 1
_META_KEY = "fedcond_teacher"
MAX_TEACHER_BYTES = 1024 * 2**20  # a ResNet-18 is ~45 MB; anything far above is not a teacher


class InvalidTeacher(FedcondError):
    """A teacher file failed validation; the message says why."""


@dataclass(frozen=True)
class TeacherInfo:
    """What a teacher is: enough to rebuild it and to check it fits a synthetic set.

    Attributes:
        model: registry name of the network (see :data:`fedcond.models.MODEL_NAMES`).
        dataset: name of the real data set it was trained on.
        image_shape: (C, H, W) of its inputs.
        classes: class names of its outputs.
        accuracy: test accuracy (fraction) on ``dataset``, in the teacher's input space.
        zca_regularization: ZCA regularisation of its input space; None for plain images.
        epochs, seed: how it was trained (None if unknown).
    """

    model: str
    dataset: str
    image_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    accuracy: float | None = None
    zca_regularization: float | None = None
    epochs: int | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields."""
        out = asdict(self)
        out["image_shape"], out["classes"] = list(self.image_shape), list(self.classes)
        return out

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> "TeacherInfo":
        """Rebuild from :meth:`to_dict` output; raise :class:`InvalidTeacher` if malformed."""
        try:
            shape = tuple(int(v) for v in meta["image_shape"])
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"image_shape must be (C, H, W), got {meta['image_shape']}")
            if not isinstance(meta["classes"], list) or not meta["classes"]:
                raise ValueError("classes must be a non-empty list of names")
            classes = tuple(str(c) for c in meta["classes"])
            acc, zca = meta.get("accuracy"), meta.get("zca_regularization")
            return cls(
                model=str(meta["model"]), dataset=str(meta["dataset"]), image_shape=shape, classes=classes,  # type: ignore[arg-type]
                accuracy=None if acc is None else float(acc),
                zca_regularization=None if zca is None else float(zca),
                epochs=None if meta.get("epochs") is None else int(meta["epochs"]),
                seed=None if meta.get("seed") is None else int(meta["seed"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidTeacher(f"malformed teacher metadata: {type(err).__name__}: {err}") from None


def _input_space(dataset: ImageDataset, zca: float | None) -> ImageDataset:
    return dataset if zca is None else zca_dataset(dataset, zca)


def train_teacher(
    dataset: ImageDataset,
    model: str = "convnet",
    epochs: int = 30,
    seed: int = 0,
    augment: Augment | None = None,
    zca_regularization: float | None = None,
    lr: float = 0.01,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train a fresh ``model`` on ``dataset``'s real training split; return it in eval mode.

    Uses the evaluation protocol's loop (:func:`fedcond.train.train_model`). With
    ``zca_regularization`` it trains on ZCA-whitened images, as a teacher for sets that
    live in that space must. ``epochs=0`` gives the untrained, randomly initialised network.
    """
    if epochs < 0:
        raise FedcondError(f"teacher epochs must be >= 0, got {epochs}")
    data = _input_space(dataset, zca_regularization)
    c, h, w = data.image_shape
    net = get_model(model, c, data.num_classes, (h, w), seed=seed).to(data.device)
    if epochs > 0:
        train_model(net, data.train_images, data.train_labels, epochs, lr=lr,
                    generator=torch.Generator().manual_seed(seed), augment=augment, on_epoch=on_epoch)
    return net.eval()


def describe_teacher(
    teacher: nn.Module,
    dataset: ImageDataset,
    model: str,
    zca_regularization: float | None = None,
    epochs: int | None = None,
    seed: int | None = None,
) -> TeacherInfo:
    """A :class:`TeacherInfo` for ``teacher``, with its test accuracy measured on ``dataset``."""
    data = _input_space(dataset, zca_regularization)
    acc = accuracy(teacher, data.test_images, data.test_labels)
    return TeacherInfo(model=model.lower(), dataset=dataset.name, image_shape=tuple(data.image_shape),  # type: ignore[arg-type]
                       classes=tuple(dataset.classes), accuracy=acc, zca_regularization=zca_regularization,
                       epochs=epochs, seed=seed)


def check_teacher_fits(sset: SyntheticSet, info: TeacherInfo) -> None:
    """Raise a FedcondError if a teacher described by ``info`` cannot label ``sset``."""
    if tuple(info.image_shape) != tuple(sset.image_shape) or len(info.classes) != sset.num_classes:
        raise FedcondError(
            f"the teacher takes {info.image_shape} images of {len(info.classes)} classes ({info.dataset}) but the set "
            f"has {sset.image_shape} images of {sset.num_classes} classes: use a teacher trained on {sset.dataset}"
        )
    want = zca_regularization(sset.config)
    have = info.zca_regularization
    if (want is None) != (have is None) or (want is not None and not math.isclose(want, have)):  # type: ignore[arg-type]
        space = lambda r: "plain (un-whitened) images" if r is None else f"ZCA space (regularization {r})"
        raise FedcondError(f"the set lives in {space(want)} but the teacher was trained on {space(have)}: "
                           "train a teacher in the set's space")


@torch.no_grad()
def teacher_probabilities(teacher: nn.Module, images: torch.Tensor, temperature: float,
                          batch_size: int = 1024) -> torch.Tensor:
    """``softmax(teacher(images) / temperature)`` as float32 (N, K) on the CPU."""
    was_training = teacher.training
    teacher.eval()  # BatchNorm teachers label with their running statistics
    device = next(teacher.parameters()).device
    rows = []
    for start in range(0, images.shape[0], batch_size):
        logits = teacher(images[start : start + batch_size].to(device, torch.float32)).float()
        rows.append(torch.softmax(logits / temperature, dim=1).cpu())
    teacher.train(was_training)
    return torch.cat(rows)


def relabel(sset: SyntheticSet, teacher: nn.Module, temperature: float,
            info: TeacherInfo | None = None) -> SyntheticSet:
    """A copy of ``sset`` whose labels are the teacher's ``softmax(logits / temperature)``.

    The copy keeps method, IPC, data set, seed and images; its config gains
    ``kd_temperature`` (the loss temperature evaluation will use) and ``relabel`` (the
    teacher's description and the kind of labels replaced). With ``info`` the teacher is
    first checked against the set (image shape, classes, ZCA space). A mosaic set
    (``factor`` > 1) gets one label per tile (:attr:`SyntheticSet.labels_per_tile`).
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise FedcondError(f"temperature must be a finite number > 0, got {temperature}")
    if info is not None:
        check_teacher_fits(sset, info)
    # mosaics: the teacher labels each tile, as the student will see it (decoded), not the mosaic
    tiles = sset.decoded().images.detach()
    probs = teacher_probabilities(teacher, tiles, temperature)
    if probs.shape != (tiles.shape[0], sset.num_classes):
        raise FedcondError(f"the teacher outputs {tuple(probs.shape[1:])} classes but the set has {sset.num_classes}")
    record: dict[str, Any] = {"source_labels": "soft" if sset.soft_labels else "hard"}
    if info is not None:
        record.update(teacher=info.model, teacher_accuracy=info.accuracy, teacher_dataset=info.dataset,
                      teacher_epochs=info.epochs, teacher_seed=info.seed,
                      teacher_zca_regularization=info.zca_regularization)
    config = {**sset.config, "kd_temperature": float(temperature), "relabel": record}
    out = replace(sset.detached(), labels=probs.float().contiguous(), config=config)
    return out.validate()


def save_teacher(path: str | os.PathLike, model: nn.Module, info: TeacherInfo) -> int:
    """Write ``model``'s weights and ``info`` atomically as safetensors; return bytes written."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": TEACHER_FORMAT, **info.to_dict()}
    return write_bytes_atomic(path, st_save(state, metadata={_META_KEY: json.dumps(meta, sort_keys=True)}))


def _header_metadata(data: bytes) -> dict[str, Any]:
    """The teacher metadata from a safetensors header, read before any tensor."""
    if len(data) < 8:
        raise InvalidTeacher("truncated file: too short for a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise InvalidTeacher(f"truncated file: the header claims {n} bytes but only {len(data) - 8} follow")
    try:
        meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"][_META_KEY])
    except (ValueError, KeyError, TypeError):
        raise InvalidTeacher("not a fedcond teacher: the header has no readable teacher metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != TEACHER_FORMAT:
        raise InvalidTeacher(f"unsupported teacher format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def load_teacher(path: str | os.PathLike, device: str | torch.device = "cpu",
                 max_bytes: int = MAX_TEACHER_BYTES) -> tuple[nn.Module, TeacherInfo]:
    """Load a teacher written by :func:`save_teacher`: (model in eval mode, info).

    Raises :class:`InvalidTeacher` (a FedcondError) on a missing, oversized, truncated or
    corrupt file, weights that do not fit the named network, or NaN/Inf weights.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidTeacher(f"no such teacher file: {path}")
    if path.stat().st_size > max_bytes:
        raise InvalidTeacher(f"{path} is {path.stat().st_size} bytes, above the cap of {max_bytes} bytes")
    data = path.read_bytes()
    try:
        info = TeacherInfo.from_dict(_header_metadata(data))
        try:
            state = st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as err:
            raise InvalidTeacher(f"corrupt or truncated file: {err}") from None
        if not all(torch.isfinite(v).all() for v in state.values() if torch.is_floating_point(v)):
            raise InvalidTeacher("weights contain NaN or Inf values")
        c, h, w = info.image_shape
        model = get_model(info.model, c, len(info.classes), (h, w))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[-1].strip()
            raise InvalidTeacher(f"weights do not fit a {info.model} for {info.image_shape}: {first}") from None
    except FedcondError as err:  # includes an unknown model name in the header
        raise InvalidTeacher(f"{path}: {err}") from None
    return model.to(device).eval(), info
