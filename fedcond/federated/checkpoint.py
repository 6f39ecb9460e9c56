"""Per-round checkpoints of one federated run, so a killed run continues where it stopped.

After every finished round the ServerApp writes, into the run's checkpoint folder:

- ``round-<k>.safetensors``: the global model, torch's RNG state and the strategy's tensors
  (FedCond's pooled sets, FedAdam's moments), each under a prefix (``model/``, ``rng/``,
  ``strategy/``);
- ``round-<k>.json``: the round, accuracy and seconds per round so far, the byte ledger,
  Python's RNG state (Flower samples nodes with the ``random`` module) and the strategy's
  JSON state (pool provenance, rejections);
- ``latest.json``: which round is complete and the settings that produced it. It is
  written last, atomically, so a kill while writing a round leaves the previous round's
  checkpoint in force; older round files are removed after it.

When the run ends, ``record.json`` holds its finished record: a rerun skips the run.

A run given more rounds than a checkpoint's continues it (nothing a round computes depends
on how many rounds follow): FedAvg run for 5 rounds is extended to 20 by the same command
with ``--rounds 20``. A checkpoint past the run's last round is refused.

Loading never unpickles: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
import random
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedcond.errors import FedcondError
from fedcond.federated.comms import ClientRound, CommLedger
from fedcond.federated.config import AppConfig
from fedcond.runinfo import write_json

FORMAT = 1
# Settings that change how fast a run goes, not what it computes: a rerun may differ here.
NOT_RESULT_SETTINGS = ("client_threads", "server_threads", "round_timeout", "out_dir", "checkpoint_dir", "device")
# Settings a later run may raise: it continues from the last round checkpointed (see the docstring).
EXTENDABLE_SETTINGS = ("rounds",)


_MISSING = object()
# Each setting's default: one a checkpoint predates (fedcond gained it later) is the same run at it.
_DEFAULTS = {f.name: f.default for f in fields(AppConfig) if f.default is not MISSING}
# What a checkpoint is compared on: the app's settings. Checkpoints written before the app's
# and the experiment's settings were split also hold the experiment's (strategies, references):
# no run computes with those, so they are left out of the comparison.
APP_SETTINGS = frozenset(_DEFAULTS)


@dataclass
class RoundState:
    """Everything the server needs to continue after round ``server_round``."""

    server_round: int
    model: dict[str, torch.Tensor]
    accuracy: dict[int, float]
    seconds: dict[int, float]
    ledger: CommLedger
    strategy_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    strategy_json: dict[str, Any] = field(default_factory=dict)
    python_random: Any = None
    torch_random: torch.Tensor | None = None
    val_accuracy: dict[int, float] = field(default_factory=dict)  # on the run's validation split


def result_settings(cfg: AppConfig) -> dict[str, Any]:
    """The settings a checkpoint must agree with to be continued: the app's (an experiment's
    own settings decide which runs there are, not what one computes)."""
    return {k: v for k, v in cfg.app_settings().items() if k not in NOT_RESULT_SETTINGS}


def check_settings(folder: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    """A ``FedcondError`` naming the first differing setting, if ``saved != now`` beyond
    :data:`EXTENDABLE_SETTINGS`."""
    for key in sorted((set(saved) & APP_SETTINGS) | set(now)):
        if key not in saved and now.get(key) == _DEFAULTS.get(key, _MISSING):
            continue  # a setting added since the checkpoint was written, at its default: the run is the same
        if key not in EXTENDABLE_SETTINGS and saved.get(key) != now.get(key):
            raise FedcondError(f"{folder} holds checkpoints of a different run ({key}: {saved.get(key)!r} there, "
                               f"{now.get(key)!r} now); delete that folder to start over "
                               "(fedcond federate: another --out, or --fresh)")


def save_round(folder: Path, cfg: AppConfig, state: RoundState) -> None:
    """Write round ``state.server_round``'s checkpoint, then point ``latest.json`` at it."""
    folder.mkdir(parents=True, exist_ok=True)
    k = state.server_round
    tensors = {f"model/{n}": t.detach().cpu().contiguous() for n, t in state.model.items()}
    tensors.update({f"strategy/{n}": t.detach().cpu().contiguous() for n, t in state.strategy_tensors.items()})
    if state.torch_random is not None:
        tensors["rng/torch"] = state.torch_random
    tmp = folder / f".round-{k}.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / f"round-{k}.safetensors")
    write_json(folder / f"round-{k}.json", {
        "format": FORMAT, "round": k,
        "accuracy": {str(r): a for r, a in state.accuracy.items()},
        "val_accuracy": {str(r): a for r, a in state.val_accuracy.items()},
        # a DP run's times grow with the private data (fedcond.federated.dp_folder): not kept
        "seconds": {} if cfg.dp_epsilon > 0 else {str(r): s for r, s in state.seconds.items()},
        "ledger": {str(r): [vars(c) for c in clients.values()] for r, clients in state.ledger.rounds.items()},
        "python_random": state.python_random, "strategy": state.strategy_json,
    })
    write_json(folder / "latest.json", {"format": FORMAT, "round": k, "settings": result_settings(cfg)})
    for old in folder.glob("round-*.*"):
        if old.stem.split("-")[-1] != str(k):
            old.unlink(missing_ok=True)


def load_latest(folder: Path, cfg: AppConfig) -> RoundState | None:
    """The newest complete round's state, or None when ``folder`` holds none.

    Settings that differ from the checkpoint's are a ``FedcondError`` (see :func:`check_settings`).
    """
    k = _latest_round(folder, cfg)
    if k is None:
        return None
    tensors = load_file(str(folder / f"round-{k}.safetensors"))
    meta = json.loads((folder / f"round-{k}.json").read_text())
    ledger = CommLedger()
    for r, clients in meta["ledger"].items():
        ledger.rounds[int(r)] = {c["node_id"]: ClientRound(**c) for c in clients}
    return RoundState(
        server_round=k,
        model={n.removeprefix("model/"): t for n, t in tensors.items() if n.startswith("model/")},
        accuracy={int(r): a for r, a in meta["accuracy"].items()},
        val_accuracy={int(r): a for r, a in meta.get("val_accuracy", {}).items()},
        seconds={int(r): s for r, s in meta["seconds"].items()},
        ledger=ledger,
        strategy_tensors={n.removeprefix("strategy/"): t for n, t in tensors.items() if n.startswith("strategy/")},
        strategy_json=meta["strategy"], python_random=meta["python_random"], torch_random=tensors.get("rng/torch"),
    )


def python_random_state() -> list[Any]:
    """``random.getstate()`` as JSON-friendly lists."""
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_python_random_state(state: list[Any] | None) -> None:
    if state is not None:
        version, internal, gauss = state
        random.setstate((version, tuple(internal), gauss))


def save_record(folder: Path, record: dict[str, Any]) -> None:
    """The finished run's record: a rerun reads it instead of running again."""
    write_json(folder / "record.json", record)


def load_record(folder: Path, cfg: AppConfig) -> dict[str, Any] | None:
    """The finished run's record, if ``folder`` holds one made with the same settings."""
    path = folder / "record.json"
    if not path.is_file():
        return None
    _latest_round(folder, cfg)  # a record of other settings, or past this run's last round, is an error
    record = json.loads(path.read_text())
    if len(record.get("rounds", [])) < cfg.effective_rounds:  # extended: continue from the last round
        return None
    return record


def _latest_round(folder: Path, cfg: AppConfig) -> int | None:
    """The round ``latest.json`` names (None without one), checked against ``cfg``: other settings
    (:func:`check_settings`), or a round past ``cfg``'s last (a shorter run), are a ``FedcondError``."""
    latest = folder / "latest.json"
    if not latest.is_file():
        return None
    head = json.loads(latest.read_text())
    check_settings(folder, head["settings"], result_settings(cfg))
    server_round = int(head["round"])
    if server_round > cfg.effective_rounds:
        raise FedcondError(f"{folder} holds round {server_round}, past this run's {cfg.effective_rounds} rounds; "
                           f"give --rounds {server_round} or more to read it, or delete that folder to start over")
    return server_round


def tensor_of_bytes(data: bytes) -> torch.Tensor:
    """Bytes as a uint8 tensor (a serialised SyntheticSet kept inside a safetensors file)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()

