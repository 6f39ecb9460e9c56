"""Resuming a killed ``fedcond continual`` run: finished runs and finished experiences.

Two kinds of files in the output folder:

- ``runs/<tag>.json``: a finished (strategy, memory, seed) run's results entry, written
  when it ends; a later start with the same settings takes it as it is.
- ``checkpoints/<tag>.pt``: after every finished experience of a run whose state fedcond
  can capture (``naive`` and the distilled strategies: model weights, the distilled
  buffer, the plugin's generators, torch's and Python's global RNG, the accuracy rows so
  far, the batch augmentation's generator). A later start restores it and trains the next
  experience, so nothing finished is recomputed and the results equal an uninterrupted run's. Avalanche's own buffers
  (``replay``, ``gdumb``, ``icarl``, ``der``) hold datasets rather than tensors; those runs resume
  at run granularity. Loading never unpickles code (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import torch

from fedcond.continual.buffer import DistilledBuffer
from fedcond.continual.plugin import DistilledMixPlugin
from fedcond.continual.strategies import BatchAugmentation
from fedcond.runinfo import write_bytes_atomic, write_json


class RunStore:
    """The resume files of one output folder."""

    def __init__(self, out_dir: Path) -> None:
        self.runs = Path(out_dir) / "runs"
        self.checkpoints = Path(out_dir) / "checkpoints"

    def finished(self, tag: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The saved entry of a finished run with exactly these settings, else None."""
        path = self.runs / f"{tag}.json"
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a damaged file: run again rather than trust it
        return entry if same_settings(entry.get("settings"), settings) else None

    def save_finished(self, tag: str, entry: dict[str, Any]) -> None:
        """Record a finished run and drop its experience checkpoint."""
        write_json(self.runs / f"{tag}.json", entry)
        (self.checkpoints / f"{tag}.pt").unlink(missing_ok=True)

    def save_experience(self, tag: str, settings: dict[str, Any], state: dict[str, Any]) -> None:
        """Checkpoint a run after a finished experience (atomic write)."""
        buf = io.BytesIO()
        torch.save({"settings": json.dumps(settings, sort_keys=True, default=str), **state}, buf)
        write_bytes_atomic(self.checkpoints / f"{tag}.pt", buf.getvalue())

    def load_experience(self, tag: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The last experience checkpoint of a run with these settings, else None."""
        path = self.checkpoints / f"{tag}.pt"
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a torn or foreign file: start the run again
            return None
        if state.get("settings") != json.dumps(settings, sort_keys=True, default=str):
            return None
        return state


def same_settings(a: Any, b: Any) -> bool:
    """Whether two runs' recorded settings are the same (as JSON: tuples and lists alike)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def can_checkpoint(strategy: Any) -> bool:
    """Whether every plugin of ``strategy`` that holds state is one fedcond can capture."""
    from avalanche.training.plugins import EvaluationPlugin  # noqa: PLC0415  (Avalanche's internals only on this path)
    from avalanche.training.plugins.clock import Clock  # noqa: PLC0415  (Avalanche's internals only on this path)
    from avalanche.training.templates.base_sgd import PeriodicEval  # noqa: PLC0415  (Avalanche's internals only on this path)

    # Evaluation and periodic evaluation keep no state between experiences that results use;
    # the clock's counters are saved with the rest.
    def capturable(p: Any) -> bool:
        if isinstance(p, DistilledMixPlugin):  # the base of every distilled plugin
            return isinstance(p.storage_policy, DistilledBuffer)  # a user's own policy: no state_dict
        return isinstance(p, (EvaluationPlugin, PeriodicEval, Clock, BatchAugmentation))  # augmentation: its draws

    return all(capturable(p) for p in strategy.plugins)


def capture(strategy: Any) -> dict[str, Any]:
    """The state a resumed run needs: model, distilled plugins, global RNGs."""
    plugins = [p.state_dict() for p in strategy.plugins if isinstance(p, DistilledMixPlugin)]
    augment = [p.generator.get_state() for p in strategy.plugins if isinstance(p, BatchAugmentation)]
    clock = {k: v for k, v in vars(strategy.clock).items() if isinstance(v, int)}
    return {"model": strategy.model.state_dict(), "plugins": plugins, "augment": augment, "clock": clock,
            "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}


def restore(strategy: Any, state: dict[str, Any]) -> None:
    """Put a :func:`capture`\\ d state back into a freshly built strategy."""
    strategy.model.load_state_dict(state["model"])
    mine = [p for p in strategy.plugins if isinstance(p, DistilledMixPlugin)]
    for plugin, saved in zip(mine, state["plugins"]):
        plugin.load_state_dict(saved)
    augmenters = [p for p in strategy.plugins if isinstance(p, BatchAugmentation)]
    for plugin, saved in zip(augmenters, state.get("augment", [])):
        plugin.generator.set_state(saved)
    for key, value in state["clock"].items():
        setattr(strategy.clock, key, value)
    torch.set_rng_state(state["torch_rng"])
    random.setstate(_as_tuple(state["python_rng"]))


def _as_tuple(value: Any) -> Any:
    """Python's RNG state is nested tuples; a round trip may give lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
