"""``SyntheticSet``: the artifact every part of fedcond exchanges.

A synthetic set is a handful of images per class plus the metadata needed to use it
without knowing how it was made. On disk and on the wire it is one safetensors payload:
the tensors, and a JSON header entry ``"fedcond"`` with the metadata. Nothing is ever
unpickled, and ``nbytes`` is the exact size of that payload.

Images may travel as float32 (default), float16, or uint8. uint8 stores 8-bit pixels
(denormalised, clamped to [0, 1]) like an ordinary image file, so re-quantising a loaded
set gives the same bytes again.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedcond.errors import FedcondError
from fedcond.formation import check_factor, decode, repeat_per_tile
from fedcond.runinfo import write_bytes_atomic

FORMAT_VERSION = 1
STORAGE_DTYPES = ("float32", "float16", "uint8")
DEFAULT_MAX_BYTES = 512 * 2**20


class InvalidSyntheticSet(FedcondError):
    """A synthetic set (file, bytes or object) failed validation; the message says why."""


@dataclass
class SyntheticSet:
    """Synthetic (or selected) images with labels and provenance.

    Attributes:
        images: float32 (N, C, H, W), normalised like the source data set.
        labels: int64 (N,) class ids, or float32 (N, K) soft labels (rows are targets); a
            mosaic set (``factor`` > 1) may carry soft labels per tile instead, (N * factor**2, K)
            in :meth:`decoded`'s tile order (a teacher's labels of each tile: ``fedcond relabel``).
        classes: class names of the source data set (K of them).
        mean, std: per-channel normalisation of ``images``.
        method: how it was made (``random``, ``herding``, ``dm``, ...).
        ipc: images per class requested.
        dataset: source data set name.
        seed: seed of the run that made it (None if unknown).
        config: the creating configuration (JSON-serialisable).
        storage_dtype: image dtype used by ``to_bytes``/``save`` (one of STORAGE_DTYPES).
        factor: multi-formation factor (:mod:`fedcond.formation`): each stored image is a
            mosaic of ``factor**2`` tiles, each a training image once upsampled; train on
            :meth:`decoded`. 1: plain images.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    method: str
    ipc: int
    dataset: str
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    storage_dtype: str = "float32"
    factor: int = 1

    # ------------------------------------------------------------------ properties
    @property
    def num_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def soft_labels(self) -> bool:
        return self.labels.dim() == 2

    @property
    def labels_per_tile(self) -> bool:
        """Soft labels given for every tile of every mosaic rather than per stored image."""
        return self.factor > 1 and self.soft_labels and self.labels.shape[0] == self.num_images * self.factor**2

    @property
    def hard_labels(self) -> torch.Tensor:
        """Class id of each stored image (argmax of its soft label; per-tile labels: of their sum)."""
        if not self.soft_labels:
            return self.labels
        labels = self.labels
        if self.labels_per_tile:
            labels = labels.reshape(self.num_images, self.factor**2, -1).sum(dim=1)
        return labels.argmax(dim=1)

    @property
    def nbytes(self) -> int:
        """Exact size in bytes of the serialised payload (what ``save`` writes)."""
        return len(self.to_bytes())

    def class_counts(self) -> list[int]:
        """Number of images per class (by hard label)."""
        return torch.bincount(self.hard_labels.cpu(), minlength=self.num_classes).tolist()

    def decoded(self) -> "SyntheticSet":
        """The images a model trains on: each mosaic's tiles upsampled (factor 1: itself)."""
        if self.factor == 1:
            return self
        images = decode(self.images, self.factor)
        labels = self.labels if self.labels_per_tile else repeat_per_tile(self.labels, self.factor)
        return replace(self, images=images, labels=labels, factor=1)

    def to(self, device: str | torch.device) -> "SyntheticSet":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def detached(self) -> "SyntheticSet":
        """A copy on the CPU, detached from any autograd graph."""
        return replace(self, images=self.images.detach().cpu().clone(), labels=self.labels.detach().cpu().clone())

    # ------------------------------------------------------------------ validation
    def validate(self) -> "SyntheticSet":
        """Check every invariant; raise :class:`InvalidSyntheticSet` naming the first broken one."""
        x, y, k = self.images, self.labels, self.num_classes
        if k < 1:
            raise InvalidSyntheticSet("no class names")
        if not torch.is_floating_point(x):
            raise InvalidSyntheticSet(f"images must be floating point, got {x.dtype}")
        if x.dim() != 4:
            raise InvalidSyntheticSet(f"images must have rank 4 (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != len(self.mean) or len(self.mean) != len(self.std):
            raise InvalidSyntheticSet(
                f"images have {x.shape[1]} channels but normalisation has {len(self.mean)} mean / {len(self.std)} std "
                "values"
            )
        if not bool(torch.isfinite(x).all()):
            raise InvalidSyntheticSet("images contain NaN or Inf values")
        if y.dim() == 1:
            if y.dtype != torch.int64:
                raise InvalidSyntheticSet(f"hard labels must be int64, got {y.dtype}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
                raise InvalidSyntheticSet(
                    f"label out of range: labels span [{int(y.min())}, {int(y.max())}] but there are {k} classes"
                )
        elif y.dim() == 2:
            if not torch.is_floating_point(y):
                raise InvalidSyntheticSet(f"soft labels must be floating point, got {y.dtype}")
            if y.shape[1] != k:
                raise InvalidSyntheticSet(f"soft labels have {y.shape[1]} columns but there are {k} classes")
            if not bool(torch.isfinite(y).all()):
                raise InvalidSyntheticSet("soft labels contain NaN or Inf values")
        else:
            raise InvalidSyntheticSet(f"labels must have rank 1 (ids) or 2 (soft), got shape {tuple(y.shape)}")
        try:
            check_factor(self.factor, tuple(x.shape[2:]))
        except FedcondError as err:
            raise InvalidSyntheticSet(str(err)) from None
        if y.shape[0] != x.shape[0] and not self.labels_per_tile:
            tiles = f" (or {x.shape[0] * self.factor**2} soft labels, one per tile)" if self.factor > 1 else ""
            raise InvalidSyntheticSet(f"count mismatch: {x.shape[0]} images but {y.shape[0]} labels{tiles}")
        if self.ipc < 0:
            raise InvalidSyntheticSet(f"ipc must be >= 0, got {self.ipc}")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise InvalidSyntheticSet(f"storage dtype {self.storage_dtype!r} is not one of {STORAGE_DTYPES}")
        return self

    # ------------------------------------------------------------------ serialisation
    def _metadata(self) -> dict[str, Any]:
        meta = {
            "format": FORMAT_VERSION,
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "method": self.method,
            "ipc": self.ipc,
            "dataset": self.dataset,
            "seed": self.seed,
            "config": self.config,
            "storage_dtype": self.storage_dtype,
            "num_images": self.num_images,
            "image_shape": list(self.image_shape),
        }
        if self.factor != 1:  # plain sets keep the header (and byte count) they always had
            meta["factor"] = self.factor
        return meta

    def _stored_images(self) -> torch.Tensor:
        x = self.images.detach().cpu().float()
        if self.storage_dtype == "float16":
            return x.half().contiguous()
        if self.storage_dtype == "uint8":
            pixels = x * _channel(self.std) + _channel(self.mean)
            return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
        return x.contiguous()

    def to_bytes(self) -> bytes:
        """Serialise to one safetensors payload (validated first)."""
        self.validate()
        labels = self.labels.detach().cpu()
        labels = labels.float().contiguous() if self.soft_labels else labels.contiguous()
        tensors = {"images": self._stored_images(), "labels": labels}
        return st_save(tensors, metadata={"fedcond": json.dumps(self._metadata(), sort_keys=True)})

    def save(self, path: str | os.PathLike) -> int:
        """Write atomically to ``path`` (``.safetensors``); return the bytes written."""
        return write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> "SyntheticSet":
        """Parse and validate a payload; raise :class:`InvalidSyntheticSet` on any problem."""
        if len(data) > max_bytes:
            raise InvalidSyntheticSet(f"payload is {len(data)} bytes, above the cap of {max_bytes} bytes")
        meta = _read_header_metadata(data)
        try:
            tensors = st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as err:
            raise InvalidSyntheticSet(f"corrupt or truncated payload: {err}") from None
        if set(tensors) != {"images", "labels"}:
            raise InvalidSyntheticSet(f"expected tensors 'images' and 'labels', found {sorted(tensors)}")
        return cls.from_tensors(tensors["images"], tensors["labels"], meta)

    @classmethod
    def from_tensors(cls, images: torch.Tensor, labels: torch.Tensor, meta: dict[str, Any]) -> "SyntheticSet":
        """Rebuild from stored tensors and the metadata dict (as in the file header); validates."""
        try:
            storage = meta["storage_dtype"]
            mean = tuple(float(v) for v in meta["mean"])
            std = tuple(float(v) for v in meta["std"])
            expected = {"float32": torch.float32, "float16": torch.float16, "uint8": torch.uint8}.get(storage)
            if expected is None:
                raise InvalidSyntheticSet(f"unknown storage dtype {storage!r}")
            if images.dtype != expected:
                raise InvalidSyntheticSet(f"images stored as {images.dtype} but the header says {storage}")
            if images.dim() != 4 or list(images.shape[1:]) != list(meta["image_shape"]):
                raise InvalidSyntheticSet(
                    f"wrong image shape {tuple(images.shape)}: the header says (N, "
                    f"{', '.join(map(str, meta['image_shape']))})"
                )
            if images.shape[0] != int(meta["num_images"]):
                raise InvalidSyntheticSet(
                    f"count mismatch: header says {meta['num_images']} images, file has {images.shape[0]}"
                )
            x = images.float()
            if storage == "uint8":
                x = (x / 255.0 - _channel(mean)) / _channel(std)
            result = cls(
                images=x,
                labels=labels,
                classes=tuple(str(c) for c in meta["classes"]),
                mean=mean,
                std=std,
                method=str(meta["method"]),
                ipc=int(meta["ipc"]),
                dataset=str(meta["dataset"]),
                seed=None if meta.get("seed") is None else int(meta["seed"]),
                config=dict(meta.get("config") or {}),
                storage_dtype=storage,
                factor=int(meta.get("factor", 1)),  # absent in sets written before multi-formation
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InvalidSyntheticSet(f"malformed metadata: {type(err).__name__}: {err}") from None
        return result.validate()

    @classmethod
    def load(cls, path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> "SyntheticSet":
        """Load and validate a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FedcondError(f"no such synthetic set file: {path}")
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidSyntheticSet(f"{path} is {size} bytes, above the cap of {max_bytes} bytes")
        try:
            return cls.from_bytes(path.read_bytes(), max_bytes=max_bytes)
        except InvalidSyntheticSet as err:
            raise InvalidSyntheticSet(f"{path}: {err}") from None


def _channel(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def _read_header_metadata(data: bytes) -> dict[str, Any]:
    """The ``fedcond`` metadata from a safetensors header, checked before any tensor is read."""
    if len(data) < 8:
        raise InvalidSyntheticSet(f"truncated payload: {len(data)} bytes, too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise InvalidSyntheticSet(
            f"truncated payload: header claims {header_len} bytes but only {len(data) - 8} follow"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"]["fedcond"])
    except (ValueError, KeyError, TypeError):
        raise InvalidSyntheticSet(
            "not a fedcond synthetic set: the header has no readable 'fedcond' metadata"
        ) from None
    if not isinstance(meta, dict):
        raise InvalidSyntheticSet("malformed metadata: expected a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise InvalidSyntheticSet(
            f"unsupported format version {meta.get('format')!r} (this fedcond reads {FORMAT_VERSION})"
        )
    for key in ("mean", "std"):
        if not isinstance(meta.get(key), list) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in meta[key]
        ):
            raise InvalidSyntheticSet(f"malformed metadata: {key!r} must be a list of finite numbers")
    return meta
