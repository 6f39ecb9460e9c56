"""The references every comparison is judged against, beside the strategies asked for.

A number of bytes or an accuracy means little alone. ``fedcond federate`` therefore adds:

- **raw data** (:func:`raw_data_upload`): the bytes of every client uploading its whole
  partition instead — as a uint8 SyntheticSet travels (8-bit pixels, which is lossless
  for 8-bit images, and int64 labels), measured on the Flower message like any upload;
- **random real images** (``random-real``): FedCond's one-shot protocol with each client
  sending ``ipc`` random real images per class instead of distilled ones, in the same
  storage dtype — the same bytes, so the gap to FedCond is what distillation buys;
- **storage dtypes** (``fedcond-<dtype>``): FedCond again with its sets sent in each other
  dtype of ``storage_dtypes`` (float16 halves the bytes, uint8 quarters them);
- the centralised upper bound (``fedcond.federated.central``).

The references are full federated runs through Flower, metered like the strategies, and
are planned (:func:`plan_runs`) rather than named in ``--strategies``: they belong to
FedCond, and a user asking for FedCond should not have to know to ask for its controls.
They go to results.json's ``reference_runs``, so ``runs`` holds exactly the strategies
asked for, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from fedcond.data import ImageDataset
from fedcond.federated.config import FederateConfig

RANDOM_REAL = "random-real"
STORAGE_DTYPE = "storage-dtype"


@dataclass(frozen=True)
class PlannedRun:
    """One simulation of the comparison: a strategy asked for, or a reference (``kind``)."""

    cfg: FederateConfig
    kind: str | None = None  # None | "random-real" | "storage-dtype"
    of: str | None = None  # the strategy a reference belongs to

    @property
    def name(self) -> str:
        return self.cfg.name


def plan_runs(cfg: FederateConfig, strategies: Sequence[str]) -> list[PlannedRun]:
    """The strategies, then the references of the first FedCond strategy among them.

    The random-real reference always runs one-shot (one upload of ``ipc`` images per
    class per client): in iterative mode it matches one round's upload. It is skipped
    when FedCond itself uses the ``random`` method (it would be the same run).
    """
    runs = [PlannedRun(cfg.for_strategy(s)) for s in strategies]
    fedcond = next((s for s in strategies if s.startswith("fedcond")), None)
    if fedcond is None:
        return runs
    base = cfg.for_strategy(fedcond)
    for dtype in cfg.storage_dtype_names:
        if dtype != cfg.storage_dtype:
            runs.append(PlannedRun(replace(base, storage_dtype=dtype, run_name=f"{fedcond}-{dtype}"),
                                   STORAGE_DTYPE, fedcond))
    if cfg.random_reference and cfg.method != "random":
        random_cfg = replace(cfg.for_strategy("fedcond"), mode="oneshot", method="random", method_options="",
                             run_name=RANDOM_REAL)
        runs.append(PlannedRun(random_cfg, RANDOM_REAL, fedcond))
    return runs


def raw_data_upload(data: ImageDataset, parts: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Bytes of every client uploading its whole partition once, as a uint8 set travels."""
    from flwr.app import RecordDict  # noqa: PLC0415  (Flower only in the federated adapter)

    from fedcond.federated.records import SET_ARRAYS_KEY, SET_META_KEY, message_nbytes, set_to_records  # noqa: PLC0415
    from fedcond.synthetic import SyntheticSet  # noqa: PLC0415

    per_client = []
    for idx in parts:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        sset = SyntheticSet(images=data.train_images[idx_t], labels=data.train_labels[idx_t], classes=data.classes,
                            mean=data.mean, std=data.std, method="raw", ipc=0, dataset=data.name,
                            storage_dtype="uint8")
        arrays, meta = set_to_records(sset)
        per_client.append(message_nbytes(RecordDict({SET_ARRAYS_KEY: arrays, SET_META_KEY: meta})))
    return {"upload_bytes": sum(per_client), "per_client_bytes": per_client, "images": sum(len(p) for p in parts),
            "encoding": "uint8 pixels + int64 labels, as a uint8 SyntheticSet travels (Flower message bytes)"}
