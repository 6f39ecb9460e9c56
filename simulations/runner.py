"""Run several strategies on the same partitions in local simulation; collect their records.

Each strategy runs through Flower's Simulation Engine (``flwr.simulation.run_simulation``,
Ray backend) with this process's ServerApp and ClientApp, built with the same run-config
overrides except ``strategy``. Clients rebuild their partition from (data set, scheme,
alpha, seed), so every strategy sees identical partitions; the runner computes them too,
once, for the label histogram it saves. Flower's log goes to a file (``flower.log`` in the
output folder, see :mod:`simulations.flower_log`), not the console.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable

from fedcond.federated.config import FederateConfig


def backend_config(num_cpus: float = 1.0, num_gpus: float = 0.0, total_cpus: int | None = None) -> dict[str, Any]:
    """Ray resources: per-client CPUs/GPU fraction, and the CPUs Ray may use in all."""
    total = total_cpus or os.cpu_count() or 1
    return {"client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus},
            "init_args": {"num_cpus": total, "num_gpus": 1 if num_gpus > 0 else 0}}


def run_strategy(cfg: FederateConfig, resources: dict[str, Any] | None = None, log_file: Path | None = None) -> dict[str, Any]:
    """Simulate ``cfg.strategy`` with ``cfg.num_clients`` SuperNodes; return its record.

    ``log_file`` only names where Flower's log went, for the error message.
    """
    from flwr.simulation import run_simulation  # noqa: PLC0415

    from simulations.client_app import make_client_app  # noqa: PLC0415
    from simulations.flower_log import without_run_simulation_deprecation  # noqa: PLC0415
    from simulations.server_app import make_server_app  # noqa: PLC0415

    results: list[dict[str, Any]] = []
    overrides = cfg.to_run_config()
    start = time.perf_counter()
    # run_simulation is deprecated in favour of `flwr run`, which needs a SuperLink; the
    # runner needs an in-process run (see simulations/flower_log.py), so it stays.
    with without_run_simulation_deprecation():
        run_simulation(server_app=make_server_app(overrides, results.append), client_app=make_client_app(overrides),
                       num_supernodes=cfg.num_clients, backend_config=resources or backend_config())
    if not results:
        raise RuntimeError(f"the {cfg.strategy} simulation ended without a result; see {log_file or 'the log above'}")
    record = results[0]
    record["wall_seconds"] = time.perf_counter() - start
    return record


def run_all(
    cfg: FederateConfig,
    strategies: list[str],
    resources: dict[str, Any] | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    log_file: Path | None = None,
) -> list[dict[str, Any]]:
    """Run every strategy in turn (same partitions, same seed); return their records.

    With ``log_file``, Flower's log and the warnings raised during the runs go there.
    """
    from simulations.flower_log import flower_log_to_file  # noqa: PLC0415

    runs = []
    with flower_log_to_file(log_file) if log_file is not None else contextlib.nullcontext():
        for name in strategies:
            record = run_strategy(cfg.for_strategy(name), resources, log_file)
            runs.append(record)
            if on_done is not None:
                on_done(record)  # prints on fedcond's console, which the file does not capture
    return runs
