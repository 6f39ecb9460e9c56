"""SyntheticSets and models as Flower records, and the exact size of what is sent.

The global model travels between both sides: :func:`new_model` is its architecture, which
the server builds to start and train it and every client builds to load what it receives.

A SyntheticSet travels as an ``ArrayRecord`` with two arrays, ``images`` (in the set's
storage dtype: float32, float16 or uint8) and ``labels``, plus a ``ConfigRecord`` holding
its metadata as one JSON string (the same header ``SyntheticSet.to_bytes`` writes). The
receiver rebuilds it with ``SyntheticSet.from_tensors``, which validates everything.

What is counted as bytes sent (``message_nbytes``): Flower 1.41 moves a Message as a tree
of content-addressed objects — the Message, its RecordDict, each record, each Array and
each ArrayChunk — and every object travels as ``obj.deflate()`` (a short header plus its
body; an ArrayChunk's body is the raw ``np.save`` bytes of up to 5 MB of the array). The
SuperLink and SuperNodes push and pull exactly those bytes (``get_all_nested_objects`` +
``deflate``), so their sum, over the unique objects of one message, is what one client
downloads or uploads. gRPC/HTTP framing and TLS are not counted; the message id (set by
the grid, excluded from ``deflate`` by Flower itself) is not part of the payload.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import torch

from fedcond.data import ImageDataset
from fedcond.federated.config import AppConfig
from fedcond.models import get_model
from fedcond.synthetic import SyntheticSet

# What a strategy sends: the model and the round's settings, under the record keys every
# strategy is built with (``arrayrecord_key`` / ``configrecord_key``, Flower's defaults),
# and that clients read.
ARRAYRECORD_KEY = "arrays"
CONFIGRECORD_KEY = "config"
# What a FedCond client sends back: its synthetic set and the set's metadata.
SET_ARRAYS_KEY = "synthetic"
SET_META_KEY = "synthetic-meta"
# What FedAF adds (fedcond.federated.fedaf): the server's global knowledge beside the model, the
# client's soft labels beside its set.
KNOWLEDGE_KEY = "fedaf-knowledge"  # {"logits": (C, C) float32, "classes": (K,) int64}
SOFT_LABELS_KEY = "fedaf-soft-labels"  # {"logits": (C, C) float32, "counts": (C,) int64}


def message_nbytes(message: Any) -> int:
    """Serialised size of ``message``: the deflated bytes of every unique object in its tree."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


# The parts of a set's method config that travel: what the server reads (a DP client's stated
# guarantee). The rest (a method's hyper-parameters, hundreds of bytes for DM) stays with the
# client: it would make a distilled upload cost more than its real-image controls (2 % on digits).
WIRE_CONFIG_KEYS = ("privacy",)


def set_to_records(sset: SyntheticSet) -> tuple[Any, Any]:
    """``(ArrayRecord, ConfigRecord)`` carrying ``sset`` in its storage dtype (validated first),
    its method config cut to :data:`WIRE_CONFIG_KEYS`."""
    from flwr.app import ArrayRecord, ConfigRecord

    sset.validate()
    sset = replace(sset, config={k: sset.config[k] for k in WIRE_CONFIG_KEYS if k in sset.config})
    labels = sset.labels.detach().cpu()
    labels = labels.float().contiguous() if sset.soft_labels else labels.contiguous()
    arrays = ArrayRecord({"images": sset._stored_images(), "labels": labels})
    meta = ConfigRecord({"metadata": json.dumps(sset._metadata(), sort_keys=True)})
    return arrays, meta


def set_from_records(arrays: Any, meta: Any) -> SyntheticSet:
    """Rebuild and validate a SyntheticSet; raises ``InvalidSyntheticSet`` with the reason.

    Everything a client controls is checked: the array keys, their dtypes and shapes, the
    metadata, finiteness and label range (``SyntheticSet.from_tensors`` + ``validate``).
    """
    from fedcond.synthetic import InvalidSyntheticSet

    if set(arrays.keys()) != {"images", "labels"}:
        raise InvalidSyntheticSet(f"expected arrays 'images' and 'labels', got {sorted(arrays.keys())}")
    try:
        raw = meta["metadata"]
        metadata = json.loads(raw) if isinstance(raw, str) else None
    except (KeyError, ValueError):
        metadata = None
    if not isinstance(metadata, dict):
        raise InvalidSyntheticSet("missing or unreadable metadata record")
    try:
        images = torch.from_numpy(arrays["images"].numpy().copy())
        labels = torch.from_numpy(arrays["labels"].numpy().copy())
    except (TypeError, ValueError) as err:  # e.g. an array that is not numpy-serialised
        raise InvalidSyntheticSet(f"cannot read arrays: {err}") from None
    return SyntheticSet.from_tensors(images, labels, metadata)


def new_model(data: ImageDataset, cfg: AppConfig, seed: int | None = None) -> torch.nn.Module:
    """The run's global model architecture, initialised from ``seed`` (default: the run seed)."""
    c, h, w = data.image_shape
    return get_model(cfg.model, c, data.num_classes, (h, w), seed=cfg.seed if seed is None else seed)


def model_to_record(model: torch.nn.Module) -> Any:
    """The model's state dict as an ArrayRecord (float32 tensors on the CPU)."""
    from flwr.app import ArrayRecord

    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})


def load_record(model: torch.nn.Module, arrays: Any) -> torch.nn.Module:
    """Load an ArrayRecord (from :func:`model_to_record`) into ``model`` in place; return it."""
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    return model
