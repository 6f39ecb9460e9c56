"""Client partitions of any fedcond data set, made by flwr-datasets partitioners.

The partitioners work on a Hugging Face ``datasets.Dataset``; we give them a tiny one with
two columns — ``label`` (the class id) and ``idx`` (the row in our train tensors) — so no
image is copied and any fedcond data set can be split. ``load_partition(i)["idx"]`` gives
client ``i``'s training indices.

Seeding: Dirichlet and pathological partitioners take ``seed``; ``IidPartitioner`` shards
contiguously, so the index table is shuffled with the seed first (otherwise a label-sorted
data set would give label-skewed "IID" shards). Same seed, same partitions — in every
process, which is how each ClientApp rebuilds its own partition from the run config.

Computing them is not free (seconds for a thousand Dirichlet clients of MNIST), and every
simulation process needs them before its first client: :func:`stored_partitions` keeps
them in the cache folder (``$FEDCOND_CACHE/partitions``, keyed by the labels, the settings
and the flwr-datasets version), so the runner computes them once and each process reads
them; :func:`cached_partitions` memoises that per process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fedcond.errors import FedcondError


def _partitioner(scheme: str, num_clients: int, alpha: float, classes_per_client: int, seed: int, n: int):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner

    if scheme == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if scheme == "dirichlet":
        # flwr-datasets resamples until every client has min_partition_size examples; with
        # many clients on a small set (100 on digits) 10 is unreachable, so scale it down.
        min_size = max(1, min(10, n // (20 * num_clients)))
        return DirichletPartitioner(num_partitions=num_clients, partition_by="label", alpha=alpha,
                                    min_partition_size=min_size, self_balancing=False, seed=seed)
    if scheme == "pathological":
        return PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                       num_classes_per_partition=classes_per_client, seed=seed)
    raise FedcondError(f"unknown partition {scheme!r}: use iid, dirichlet or pathological")


def partition_indices(
    labels: torch.Tensor | np.ndarray | Sequence[int],
    num_clients: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Training indices of every client (sorted int64 tensors), from a flwr-datasets partitioner.

    Raises:
        FedcondError: impossible settings (more clients than images, a partitioner that
            cannot satisfy its constraints).
    """
    from datasets import Dataset  # flwr-datasets' dependency

    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    n = int(y.shape[0])
    if num_clients > n:
        raise FedcondError(f"{num_clients} clients but only {n} training images; use fewer clients")
    num_classes = int(y.max()) + 1 if n else 0
    if scheme == "pathological" and not 1 <= classes_per_client <= num_classes:
        raise FedcondError(f"--classes-per-client must be in [1, {num_classes}], got {classes_per_client}")
    order = np.random.default_rng(seed).permutation(n) if scheme == "iid" else np.arange(n)
    table = Dataset.from_dict({"label": y[order].tolist(), "idx": order.tolist()})
    part = _partitioner(scheme, num_clients, alpha, classes_per_client, seed, n)
    part.dataset = table
    try:
        with warnings.catch_warnings():  # resampling notices and unused-class notes, not errors
            warnings.simplefilter("ignore", UserWarning)
            out = [torch.as_tensor(sorted(part.load_partition(i)["idx"]), dtype=torch.long) for i in range(num_clients)]
    except ValueError as err:  # flwr-datasets explains unsatisfiable settings in a ValueError
        raise FedcondError(f"cannot partition {n} images into {num_clients} {scheme} clients: {err}") from None
    return out


PARTITIONS_FORMAT = 1


def stored_partitions(
    labels: torch.Tensor,
    num_clients: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
    folder: Path | None = None,
) -> list[torch.Tensor]:
    """:func:`partition_indices`, read from ``folder`` when an earlier call (any process)
    stored them there, else computed and stored (written atomically; an unreadable or
    inconsistent file is computed again). Default folder: ``<cache>/partitions``."""
    from importlib import metadata

    from fedcond.data import default_cache_dir

    y = np.ascontiguousarray(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64))
    settings = {"format": PARTITIONS_FORMAT, "num_clients": num_clients, "scheme": scheme, "alpha": alpha,
                "classes_per_client": classes_per_client, "seed": seed,
                "flwr_datasets": metadata.version("flwr-datasets")}
    key = hashlib.sha256(y.tobytes() + json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    path = (folder or default_cache_dir() / "partitions") / f"{key}.pt"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        sizes, flat = saved["sizes"], saved["indices"]
        if sizes.numel() == num_clients and int(sizes.sum()) == flat.numel() and (flat.numel() == 0 or (
                int(flat.min()) >= 0 and int(flat.max()) < y.shape[0])):
            return list(torch.split(flat, sizes.tolist()))
    except Exception:  # noqa: BLE001  (missing, truncated or foreign file: compute again)
        pass
    parts = partition_indices(y, num_clients, scheme, alpha, classes_per_client, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save({"sizes": torch.tensor([p.numel() for p in parts], dtype=torch.long),
                    "indices": torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)}, tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the recomputation
        pass
    return parts


@functools.lru_cache(maxsize=8)
def cached_partitions(
    dataset: str, data_dir: str, num_clients: int, scheme: str, alpha: float, classes_per_client: int, seed: int,
    val_fraction: float = 0.0, train_per_class: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Partitions of a named data set, once per process (ClientApps call this per message),
    read from the cache folder when any process stored them (:func:`stored_partitions`).

    With ``val_fraction`` > 0 they split the train split without the run's validation images
    (:func:`fedcond.federated.data_cache.federated_data`; ``train_per_class`` > 0: its per-class
    subsample), and index into that."""
    from fedcond.federated.data_cache import _split, get_dataset  # loads data only when asked

    data = (_split(dataset, data_dir, "", val_fraction, seed, train_per_class)[0] if val_fraction > 0
            else get_dataset(dataset, data_dir))
    return tuple(stored_partitions(data.train_labels, num_clients, scheme, alpha, classes_per_client, seed))


def run_partitions(cfg) -> tuple[torch.Tensor, ...]:
    """The partitions of a run's clients (``cfg``: a FederateConfig), indices into
    :func:`fedcond.federated.data_cache.federated_data`."""
    return cached_partitions(cfg.dataset, cfg.data_dir, cfg.num_clients, cfg.partition, cfg.alpha,
                             cfg.classes_per_client, cfg.seed, cfg.val_fraction, cfg.train_per_class)


def label_histogram(labels: torch.Tensor, parts: Sequence[torch.Tensor], num_classes: int) -> list[list[int]]:
    """``hist[client][class]``: how many training images of each class every client holds."""
    labels = labels.cpu()
    return [torch.bincount(labels[p], minlength=num_classes).tolist() for p in parts]
