"""``FederateConfig``: every setting of one federated run, as one typed dataclass.

The same settings travel three ways: CLI flags / TOML (``fedcond federate``), Flower's run
config (``[tool.flwr.app.config]`` in pyproject.toml, kebab-case keys, values str/int/float/
bool), and the apps' constructor overrides in the in-process runner. ``from_run_config`` and
``to_run_config`` translate between the dataclass and Flower's flat dict, so the ClientApp
and ServerApp read exactly the fields the runner set.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fedcond.errors import FedcondError

PARTITIONS = ("iid", "dirichlet", "pathological")
STRATEGIES = ("fedcond", "fedcond-iterative", "fedavg", "fedprox", "fedadam")
MODES = ("oneshot", "iterative")


@dataclass
class FederateConfig:
    """One federated run: data, partition, strategy, client work, server work, faults.

    ``strategy`` is the one strategy a ServerApp runs; the runner loops over several.
    ``rounds`` applies to every strategy except one-shot FedCond, which always runs one.
    """

    dataset: str = "digits"
    data_dir: str = ""  # "" = default location / download
    num_clients: int = 10
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2  # pathological partition
    seed: int = 0
    strategy: str = "fedcond"
    mode: str = "oneshot"  # FedCond: oneshot | iterative
    rounds: int = 5
    fraction: float = 1.0  # clients sampled per round
    model: str = "convnet"
    # FedCond clients
    method: str = "dm"
    ipc: int = 10
    iterations: int = 100  # per client and round; CPU-sized (DM's paper setting is 20k)
    storage_dtype: str = "float32"
    max_payload_bytes: int = 16 * 2**20  # server-side cap on one reply
    # FedAvg / FedProx / FedAdam clients
    local_epochs: int = 5  # tuned on digits (benchmarks/results/federated_digits.md)
    lr: float = 0.1
    batch_size: int = 32
    proximal_mu: float = 0.01
    server_lr: float = 0.01  # FedAdam's eta
    # FedCond server: training the global model on the pooled sets
    server_epochs: int = 150
    server_lr_train: float = 0.01
    # faults and resources
    fail_fraction: float = 0.0
    fail_mode: str = "raise"  # raise (exception -> error reply) | corrupt (NaN payload)
    client_threads: int = 1
    device: str = "cpu"
    out_dir: str = ""  # where the ServerApp writes its per-strategy JSON ("" = nowhere)
    extra: dict[str, Any] = field(default_factory=dict)  # method options (-o key=value)

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise FedcondError(f"--num-clients must be >= 1, got {self.num_clients}")
        if self.partition not in PARTITIONS:
            raise FedcondError(f"--partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        if self.alpha <= 0:
            raise FedcondError(f"--alpha must be > 0, got {self.alpha}")
        if self.strategy not in STRATEGIES:
            raise FedcondError(f"unknown strategy {self.strategy!r}: use {', '.join(STRATEGIES)}")
        if self.mode not in MODES:
            raise FedcondError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.rounds < 1 or self.ipc < 1 or self.local_epochs < 1 or self.server_epochs < 1:
            raise FedcondError("--rounds, --ipc, --local-epochs and server epochs must be >= 1")
        if not 0 < self.fraction <= 1:
            raise FedcondError(f"--fraction must be in (0, 1], got {self.fraction}")
        if not 0 <= self.fail_fraction < 1:
            raise FedcondError(f"--fail-fraction must be in [0, 1), got {self.fail_fraction}")
        if self.fail_mode not in ("raise", "corrupt"):
            raise FedcondError(f"fail mode must be raise or corrupt, got {self.fail_mode!r}")
        if self.lr <= 0 or self.server_lr_train <= 0 or self.proximal_mu < 0:
            raise FedcondError("learning rates must be > 0 and proximal mu >= 0")

    # ------------------------------------------------------------------ derived
    @property
    def effective_mode(self) -> str:
        """``fedcond-iterative`` is FedCond in iterative mode; other names keep ``mode``."""
        return "iterative" if self.strategy == "fedcond-iterative" else self.mode

    @property
    def effective_rounds(self) -> int:
        """One-shot FedCond runs exactly one round; everything else ``rounds``."""
        if self.strategy.startswith("fedcond") and self.effective_mode == "oneshot":
            return 1
        return self.rounds

    def for_strategy(self, strategy: str) -> "FederateConfig":
        return replace(self, strategy=strategy)

    # ------------------------------------------------------------------ Flower run config
    def to_run_config(self) -> dict[str, str | int | float | bool]:
        """Flat kebab-case dict for Flower's run config (``extra`` goes in as ``opt-<key>``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            out[f.name.replace("_", "-")] = getattr(self, f.name)
        for key, value in self.extra.items():
            out[f"opt-{key}"] = value
        return out

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], overrides: dict[str, Any] | None = None) -> "FederateConfig":
        """Build from Flower's run config, then apply ``overrides`` (same kebab-case keys)."""
        merged = {**dict(run_config), **(overrides or {})}
        known = {f.name for f in fields(cls)} - {"extra"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in merged.items():
            name = key.replace("-", "_")
            if key.startswith("opt-"):
                extra[key[4:].replace("-", "_")] = value
            elif name in known:
                values[name] = value
        # Flower's TOML loader gives ints for whole floats (alpha = 1) and vice versa; coerce.
        for f in fields(cls):
            if f.name in values and f.type in ("float", "int"):
                values[f.name] = float(values[f.name]) if f.type == "float" else int(values[f.name])
        return cls(**values, extra=extra)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "FederateConfig":
        """Read ``[federate]`` (or top-level keys) from a TOML file; ``overrides`` win."""
        path = Path(path)
        if not path.is_file():
            raise FedcondError(f"no such config file: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise FedcondError(f"cannot parse {path}: {err}") from None
        table = data.get("federate", data)
        table = {k.replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict) or k == "extra"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known - {"strategies"})
        if unknown:
            raise FedcondError(f"{path}: unknown key(s) {', '.join(unknown)}")
        table.pop("strategies", None)
        return cls(**{**table, **{k: v for k, v in overrides.items() if v is not None}})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def strategies_from_toml(path: str | Path) -> list[str] | None:
    """The ``strategies`` list of a TOML config, if it has one."""
    data = tomllib.loads(Path(path).read_text())
    table = data.get("federate", data)
    value = table.get("strategies")
    if value is None:
        return None
    return [s.strip() for s in (value.split(",") if isinstance(value, str) else value)]
