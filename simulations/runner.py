"""Run several strategies on the same partitions in local simulation; collect their records.

Each run (a strategy, or a reference of :mod:`fedcond.federated.references`) goes through
Flower's Simulation Engine (``flwr.simulation.run_simulation``, Ray backend) with this
process's ServerApp and ClientApp, built with the run's own config as run-config
overrides. Clients rebuild their partition from (data set, scheme, alpha, seed), so every
run sees identical partitions. Flower's log goes to a file (``flower.log`` in the output
folder, see :mod:`fedcond.simulations.flower_log`), not the console; progress goes to ``on_event``
(:mod:`fedcond.federated.events`).

With a checkpoint root, each run checkpoints every round into ``<root>/<run name>/`` and
keeps its finished record there (``record.json``): running the same comparison again
skips finished runs and continues an interrupted one after its last finished round.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from fedcond.federated.checkpoint import load_latest, load_record, save_record
from fedcond.federated.config import AppConfig
from fedcond.federated.dp_folder import checkpoint_root, is_private_plan, strip_timings
from fedcond.federated.events import OnEvent, RunFinished, RunStarted
from fedcond.federated.references import PlannedRun
from fedcond.simulations.usage import TreeUsage


def backend_config(num_cpus: float = 1.0, num_gpus: float = 0.0, total_cpus: int | None = None) -> dict[str, Any]:
    """Ray resources: per-client CPUs/GPU fraction, and the CPUs Ray may use in all.

    Ray would copy every actor's output to this process's console (Flower's client-side
    log lines, "Manually terminating ClientAppActor" at each shutdown); a client's error
    reaches the server in its error reply anyway, and is logged to flower.log from there.
    """
    total = total_cpus or os.cpu_count() or 1
    return {"client_resources": {"num_cpus": num_cpus, "num_gpus": num_gpus},
            "init_args": {"num_cpus": total, "num_gpus": 1 if num_gpus > 0 else 0, "log_to_driver": False}}


def client_gpus(device: str, given: float | None = None) -> float:
    """Each simulated client's GPU share: ``given``, else a quarter of the GPU on a CUDA
    ``device`` and none on the CPU. A client given none cannot use the GPU at all: Ray sets
    ``CUDA_VISIBLE_DEVICES`` empty in actors that ask for no GPU."""
    if given is not None:
        return given
    return 0.25 if device.startswith("cuda") else 0.0


def run_strategy(cfg: AppConfig, resources: dict[str, Any] | None = None, log_file: Path | None = None,
                 on_event: OnEvent | None = None) -> dict[str, Any]:
    """Simulate ``cfg.strategy`` with ``cfg.num_clients`` SuperNodes; return its record.

    ``log_file`` only names where Flower's log went, for the error message. An exception
    raised by ``on_event`` ends the simulation and propagates.
    """
    from flwr.simulation import run_simulation

    from fedcond.simulations.client_app import make_client_app
    from fedcond.simulations.flower_log import without_run_simulation_deprecation
    from fedcond.simulations.server_app import make_server_app

    # Ray starts its workers -- every ClientApp here -- at niceness 15: beside any other busy
    # process the clients starve and a round runs past its timeout (measured: a CIFAR-10 round's
    # clients got 3 CPU-minutes in 60 beside four single-thread jobs). Clients do the work, so
    # they run at the driver's priority unless the user set RAY_worker_niceness.
    os.environ.setdefault("RAY_worker_niceness", "0")
    results: list[dict[str, Any]] = []
    overrides = cfg.to_run_config()
    start = time.perf_counter()
    # run_simulation is deprecated in favour of `flwr run`, which needs a SuperLink; the
    # runner needs an in-process run (see simulations/flower_log.py), so it stays.
    with without_run_simulation_deprecation(), TreeUsage() as usage:
        run_simulation(server_app=make_server_app(overrides, results.append, on_event, cfg.num_clients),
                       client_app=make_client_app(overrides), num_supernodes=cfg.num_clients,
                       backend_config=resources or backend_config())
    if not results:
        raise RuntimeError(f"the {cfg.name} simulation ended without a result; see {log_file or 'the log above'}")
    record = results[0]
    record["wall_seconds"] = time.perf_counter() - start
    record["peak_memory"] = usage.to_json()  # this process and its Ray workers, during this run
    record["cpu_seconds"] = usage.cpu_seconds()
    return record


def run_all(
    runs: Sequence[PlannedRun],
    resources: dict[str, Any] | None = None,
    on_event: OnEvent | None = None,
    log_file: Path | None = None,
    checkpoints: Path | None = None,
    private: bool = False,
) -> list[dict[str, Any]]:
    """Run every planned run in turn (same partitions, same seed); return their records.

    With ``log_file``, Flower's log and the warnings raised during the runs go there; with
    ``checkpoints``, runs resume (see the module docstring). ``private`` (a DP experiment):
    the log and the checkpoints keep no timings (:mod:`fedcond.federated.dp_folder`).
    """
    from fedcond.simulations.flower_log import flower_log_to_file

    emit = on_event or (lambda event: None)
    records = []
    with flower_log_to_file(log_file, private) if log_file is not None else contextlib.nullcontext():
        for run in runs:
            cfg = run.cfg
            private_run = private and is_private_plan(cfg, run.kind)
            if checkpoints is not None:  # a DP experiment's non-DP runs keep theirs in its non-private part
                root = checkpoint_root(checkpoints, private, private_run)
                cfg = replace(cfg, checkpoint_dir=str(root / run.name))
            record = load_record(Path(cfg.checkpoint_dir), cfg) if cfg.checkpoint_dir else None
            if record is None:
                saved = load_latest(Path(cfg.checkpoint_dir), cfg) if cfg.checkpoint_dir else None
                emit(
                    RunStarted(run.name, cfg.effective_rounds, cfg.num_clients, saved.server_round + 1 if saved else 1)
                )
                record = run_strategy(cfg, resources, log_file, on_event)
                if run.kind is not None:
                    record.update({"reference": run.kind, "reference_of": run.of})
                if cfg.checkpoint_dir:
                    kept = strip_timings(copy.deepcopy(record)) if private_run else record
                    save_record(Path(cfg.checkpoint_dir), kept)
                emit(RunFinished(run.name, record))
            else:
                emit(RunFinished(run.name, record, from_checkpoint=True))
            records.append(record)
    return records
