"""One distillation per client for every storage dtype: the storage-dtype references reuse sets.

``fedcond federate`` compares FedCond's upload in several storage dtypes (float32, float16,
uint8; :mod:`fedcond.federated.references`). Only the encoding differs between those runs:
the same client, seed and settings distill the same set. So a one-shot FedCond client that
runs with a checkpoint folder keeps its distilled set (float32, lossless) in
``<checkpoint root>/sets/<key>/partition-<id>.safetensors``, ``key`` a digest of every
setting that shapes the set, and a later run with the same key — a storage-dtype reference —
loads it and only re-encodes it in its own dtype when it replies, through Flower like any
upload, so its bytes are measured as before. With DP clients this also keeps the reference
from spending the privacy budget a second time on the same data.

Iterative FedCond (sets depend on the global model), runs without a checkpoint folder
(``flwr run``) and a missing or unreadable file distill as before.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from fedcond.errors import FedcondError
from fedcond.federated.config import AppConfig
from fedcond.synthetic import SyntheticSet

# The settings a one-shot client's set depends on (storage dtype, run name and the other
# runs of the comparison do not shape it).
SET_FIELDS = ("dataset", "data_dir", "num_clients", "partition", "alpha", "classes_per_client", "seed", "method",
              "method_options", "ipc", "iterations", "model", "dp_epsilon", "dp_delta", "precision", "device")


def set_key(cfg: AppConfig) -> str:
    """A digest of the settings that shape a one-shot FedCond client's set."""
    values = {name: getattr(cfg, name) for name in SET_FIELDS}
    values["method_options"] = cfg.method_option_values  # the same options in another order: the same set
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def kept_set_path(cfg: AppConfig, partition_id: int) -> Path | None:
    """Where this client's one-shot set is kept (None: this run keeps none)."""
    if not cfg.checkpoint_dir or cfg.effective_mode != "oneshot":
        return None
    return Path(cfg.checkpoint_dir).parent / "sets" / set_key(cfg) / f"partition-{partition_id}.safetensors"


def load_kept_set(cfg: AppConfig, partition_id: int) -> SyntheticSet | None:
    """The set an earlier run with the same settings distilled for this client, in this
    run's storage dtype; None when there is none (or it cannot be read: distill again)."""
    path = kept_set_path(cfg, partition_id)
    if path is None or not path.is_file():
        return None
    try:
        sset = SyntheticSet.load(path)
    except FedcondError:
        return None
    sset.storage_dtype = cfg.storage_dtype
    return sset


def keep_set(cfg: AppConfig, partition_id: int, sset: SyntheticSet) -> None:
    """Keep this client's freshly distilled set, float32 (lossless), for later runs."""
    path = kept_set_path(cfg, partition_id)
    if path is not None:
        replace(sset, storage_dtype="float32").save(path)
