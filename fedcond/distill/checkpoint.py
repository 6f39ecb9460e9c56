"""Checkpoint and resume of an iterative run.

A checkpoint holds exactly what the next iteration depends on — the synthetic tensors,
the optimiser state, the generator state and the iteration index — so a killed run
restarted with the same config and checkpoint directory continues bit for bit where it
stopped. A method with state of its own beyond the synthetic tensors (FRePo's pool of
online networks and their optimisers) keeps it in a :class:`MethodState`, saved and
restored with the rest. Files are written to a temporary name and moved into place
(``os.replace``), and read with ``torch.load(weights_only=True)``: tensors, numbers and
strings only, never arbitrary pickled objects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from fedcond.distill.base import describe_difference
from fedcond.errors import FedcondError

if TYPE_CHECKING:  # annotations only: loop.py imports this module
    from fedcond.distill.loop import IterativeConfig, RunState

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
# Fields that change how long or how verbosely a run goes, not what it computes: a run may
# be resumed with other values (e.g. more iterations).
RUN_LENGTH_FIELDS = ("iterations", "checkpoint_dir", "checkpoint_every", "log_every", "eval_every")


class MethodState(Protocol):
    """State a method keeps between iterations besides the synthetic tensors (torch-style).

    ``state_dict()`` must hold only what ``torch.load(weights_only=True)`` reads back:
    tensors, numbers, strings, and lists/dicts of them (module and optimiser state dicts do).
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def run_fingerprint(method: str, config: IterativeConfig, seed: int, dataset: str, num_images: int) -> str:
    """What must match for a checkpoint to be resumed: everything but the run length."""
    values = {k: v for k, v in config.to_dict().items() if k not in RUN_LENGTH_FIELDS}
    return json.dumps({"method": method, "seed": seed, "dataset": dataset, "num_images": num_images, **values},
                      sort_keys=True, default=str)


def _comparable(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint with DM's ``real_precision`` folded into ``precision``: checkpoints written
    before ``precision`` existed name it by its earlier name (then float32 by default)."""
    values = dict(fingerprint)
    alias = values.pop("real_precision", None)
    values.setdefault("precision", alias or "float32")
    return values


def save_checkpoint(path: Path, state: RunState, generator: torch.Generator, iteration: int, fingerprint: str,
                    method_state: MethodState | None = None) -> None:
    """Atomically write the run's state (and ``method_state``'s) after ``iteration`` iterations."""
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "iteration": iteration,
        "fingerprint": fingerprint,
        "images": state.images.detach().cpu(),
        "optimizer": state.optimizer.state_dict(),
        "generator": generator.get_state(),
    }
    if state.label_logits is not None:
        payload["label_logits"] = state.label_logits.detach().cpu()
    for name, tensor in state.extras.items():
        payload[f"extra.{name}"] = tensor.detach().cpu()
    if method_state is not None:
        payload["method_state"] = method_state.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, state: RunState, generator: torch.Generator, fingerprint: str,
                    method_state: MethodState | None = None) -> int:
    """Restore ``state``, ``generator`` (and ``method_state``) from ``path``; return the iterations done."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        iteration, saved = int(payload["iteration"]), str(payload["fingerprint"])
    except Exception as err:  # noqa: BLE001  (unpickling errors come in many types; all mean "unreadable")
        raise FedcondError(f"cannot read checkpoint {path}: {err}; delete it to start over") from None
    there, now = _comparable(json.loads(saved)), _comparable(json.loads(fingerprint))
    if there != now:
        diff = describe_difference(there, now)
        raise FedcondError(
            f"checkpoint {path} belongs to a different run ({diff}); use another checkpoint dir or delete it"
        )
    with torch.no_grad():
        state.images.copy_(payload["images"])
        if state.label_logits is not None:
            state.label_logits.copy_(payload["label_logits"])
        for name, tensor in state.extras.items():
            tensor.copy_(payload[f"extra.{name}"])
    state.optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"])
    if method_state is not None:
        method_state.load_state_dict(payload["method_state"])
    return iteration
