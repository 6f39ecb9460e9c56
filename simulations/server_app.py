"""The Flower ServerApp: run one strategy, meter every message, evaluate every round.

``app`` is what ``flwr run .`` and a SuperLink load (settings from the run config);
:func:`make_server_app` builds one with overrides and a result callback for the in-process
runner. The run's record — accuracy after each round, bytes per client per round and
cumulative, what was lost — goes to the callback and, when ``out-dir`` is set, to
``<out-dir>/strategy-<name>.json``.

After every round (in the central evaluation, Flower's last step of a round) the server
checkpoints when ``checkpoint-dir`` is set (:mod:`fedcond.federated.checkpoint`) and then
reports the round to ``on_event``; a server that finds a checkpoint continues after it
(:class:`fedcond.strategies.resumed.FromRound`).
"""

from __future__ import annotations

import json
import sys
import time
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedcond.errors import FedcondError
from fedcond.federated.checkpoint import (
    RoundState,
    load_latest,
    python_random_state,
    save_round,
    set_python_random_state,
)
from fedcond.federated.comms import CommLedger, metered_grid
from fedcond.federated.config import AppConfig
from fedcond.federated.data_cache import federated_data, federated_validation
from fedcond.federated.events import ClientReplied, OnEvent, RoundFinished
from fedcond.federated.records import model_to_record, new_model
from fedcond.federated.server_training import evaluate_arrays

# The processes Flower starts for one run (simulation, or a deployment's ServerApp); each exits after it.
FLOWER_RUN_PROCESSES = ("flwr-simulation", "flwr-serverapp")


def run_server(grid: Grid, cfg: AppConfig, on_result: Callable[[dict[str, Any]], None] | None = None,
               on_event: OnEvent | None = None, expected_nodes: int | None = None) -> dict[str, Any]:
    """Run ``cfg.strategy`` on ``grid``; return the run's record (see module docstring).

    ``expected_nodes``: the federation's size where known (see ``fedcond.strategies.build_strategy``).

    With ``cfg.checkpoint_dir`` every finished round is checkpointed there, and a run
    that finds a checkpoint continues after its round (:mod:`fedcond.federated.checkpoint`).
    """
    from fedcond.strategies import build_strategy
    from fedcond.strategies.resumed import FromRound, load_strategy_state, strategy_state

    data = federated_data(cfg)
    validation = federated_validation(cfg)
    ledger = CommLedger()
    strategy = build_strategy(cfg, data, ledger, expected_nodes)
    accuracy: dict[int, float] = {}
    val_accuracy: dict[int, float] = {}
    times: dict[int, float] = {}
    folder = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    saved = load_latest(folder, cfg) if folder is not None else None
    done, elapsed = 0, 0.0
    initial = model_to_record(new_model(data, cfg))
    if saved is not None:
        done, elapsed = saved.server_round, max(saved.seconds.values(), default=0.0)
        accuracy.update(saved.accuracy)
        val_accuracy.update(saved.val_accuracy)
        times.update(saved.seconds)
        ledger.rounds.update(saved.ledger.rounds)
        load_strategy_state(strategy, saved.strategy_tensors, saved.strategy_json)
        set_python_random_state(saved.python_random)
        if saved.torch_random is not None:
            torch.set_rng_state(saved.torch_random)
        initial = ArrayRecord({k: v.contiguous() for k, v in saved.model.items()})
        log(INFO, "%s: resuming from the checkpoint of round %d in %s", cfg.name, done, folder)
    start = time.perf_counter() - elapsed

    def evaluate_fn(local_round: int, arrays: Any) -> MetricRecord:
        server_round = local_round + done
        if local_round == 0 and done:  # the checkpointed model: its accuracy is known
            return MetricRecord({"accuracy": accuracy[done]})
        measured = evaluate_arrays(data, cfg, arrays, validation)
        accuracy[server_round], val_accuracy[server_round] = measured["accuracy"], measured["val_accuracy"]
        times[server_round] = time.perf_counter() - start
        if server_round > 0:
            finish_round(server_round, arrays)
        return MetricRecord(measured)

    def finish_round(server_round: int, arrays: Any) -> None:
        if folder is not None:
            tensors, state = strategy_state(strategy)
            save_round(folder, cfg, RoundState(
                server_round=server_round, model=arrays.to_torch_state_dict(), accuracy=dict(accuracy),
                seconds=dict(times), ledger=ledger, strategy_tensors=tensors, strategy_json=state,
                python_random=python_random_state(), torch_random=torch.get_rng_state(),
                val_accuracy=dict(val_accuracy)))
        if on_event is not None:
            up = sum(ledger.round_totals(r)[0] for r in range(1, server_round + 1))
            down = sum(ledger.round_totals(r)[1] for r in range(1, server_round + 1))
            sampled, lost = len(ledger.rounds.get(server_round, {})), len(ledger.lost(server_round))
            on_event(RoundFinished(cfg.name, server_round, cfg.effective_rounds, accuracy[server_round], up, down,
                                   sampled - lost, lost, times[server_round]))

    def on_reply(server_round: int, replied: int, sampled: int, ok: bool) -> None:
        on_event(ClientReplied(cfg.name, server_round, replied, sampled, ok))  # type: ignore[misc]

    remaining = cfg.effective_rounds - done
    if remaining > 0:
        metered = metered_grid(grid, ledger, on_reply=on_reply if on_event is not None else None)
        runner = FromRound(strategy, done) if done else strategy
        runner.start(grid=metered, initial_arrays=initial, num_rounds=remaining,
                     train_config=ConfigRecord(), evaluate_fn=evaluate_fn, timeout=cfg.round_timeout)
    record = build_record(cfg, ledger, accuracy, times, strategy, val_accuracy)
    log(INFO, "%s: final accuracy %.4f, upload %d bytes, download %d bytes", cfg.name,
        record["final_accuracy"], record["upload_bytes"], record["download_bytes"])
    if on_result is not None:
        on_result(record)
    if cfg.out_dir:
        path = Path(cfg.out_dir) / f"strategy-{cfg.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_record(cfg: AppConfig, ledger: CommLedger, accuracy: dict[int, float], times: dict[int, float],
                 strategy: Any, val_accuracy: dict[int, float] | None = None) -> dict[str, Any]:
    """The per-strategy entry of results.json: rounds with cumulative bytes, and losses.

    ``selected_round`` is the round of the best validation accuracy (the earliest of equals),
    ``selected_accuracy`` the test accuracy there: what a report gives for the run. The test
    accuracy of every round is kept for the curves, never maximised over."""
    val_accuracy = val_accuracy or {}
    rounds, up, down = [], 0, 0
    for r in range(1, cfg.effective_rounds + 1):
        ru, rd = ledger.round_totals(r)
        up, down = up + ru, down + rd
        lost = ledger.lost(r)
        rounds.append({
            "round": r, "accuracy": accuracy.get(r), "val_accuracy": val_accuracy.get(r),
            "upload_bytes": up, "download_bytes": down,
            "round_upload_bytes": ru, "round_download_bytes": rd, "seconds": times.get(r),
            "clients_seconds": ledger.client_seconds.get(r),  # sending to last reply (None if resumed)
            "clients_sampled": len(ledger.rounds.get(r, {})), "clients_lost": len(lost),
            "lost": [{"node_id": c.node_id, "status": c.status, "reason": c.reason}
                     for c in sorted(lost, key=lambda c: _client_order(vars(c)))],
            "clients": sorted(ledger.to_json(r), key=_client_order),
        })
    out = {"strategy": cfg.strategy, "mode": cfg.effective_mode if cfg.strategy.startswith("fedcond") else None,
           "initial_accuracy": accuracy.get(0), "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
           "upload_bytes": up, "download_bytes": down, "rounds": rounds,
           "clients_lost_total": sum(r["clients_lost"] for r in rounds), "name": cfg.name,
           "precision": cfg.resolved_precision(),  # what ran here (clients resolve "auto" on their device)
           # the training recipe of this run's learner (the server's on sets for FedCond, else the clients')
           "recipe": (cfg.server_recipe if hasattr(strategy, "provenance") else cfg.recipe).to_json(),
           **selected_round(rounds)}
    if hasattr(strategy, "privacy_record"):  # DP-FedAvg: the run's (epsilon, delta) and its plan
        out.update(strategy.privacy_record())
    if hasattr(strategy, "provenance"):
        out.update({"method": cfg.method, "ipc": cfg.ipc, "storage_dtype": cfg.storage_dtype})
        out["pool_provenance"] = strategy.provenance()
        out["rejections"] = strategy.rejections
    return out


def selected_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round a run is reported at: the best validation accuracy (the earliest of equals),
    with its validation and test accuracies and its cumulative bytes."""
    scored = [r for r in rounds if r.get("val_accuracy") is not None]
    if not scored:
        return {"selected_round": None, "selected_accuracy": None, "selected_val_accuracy": None}
    best = max(scored, key=lambda r: (r["val_accuracy"], -r["round"]))
    return {"selected_round": best["round"], "selected_accuracy": best["accuracy"],
            "selected_val_accuracy": best["val_accuracy"], "selected_upload_bytes": best["upload_bytes"],
            "selected_download_bytes": best.get("download_bytes", 0)}


def _client_order(client: dict[str, Any]) -> tuple[int, int]:
    """Clients by partition id (node ids are drawn afresh by every federation)."""
    pid = client.get("partition_id")
    return (pid if pid is not None else 1 << 62, client["node_id"])


def make_server_app(overrides: dict[str, Any] | None = None,
                    on_result: Callable[[dict[str, Any]], None] | None = None,
                    on_event: OnEvent | None = None, expected_nodes: int | None = None) -> ServerApp:
    """A ServerApp reading its settings from the run config, then ``overrides``; ``expected_nodes``:
    the size of the federation it will run with, where the caller knows it."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            cfg = AppConfig.from_run_config(context.run_config, overrides)
            if expected_nodes is None:  # launched by Flower (flwr run, a SuperLink): check before any work
                cfg = launched_by_flower(grid, cfg)
        except FedcondError as err:  # the user's to fix: one line first, then Flower ends the run as failed
            log(ERROR, "error: %s", err)
            if Path(sys.argv[0]).name in FLOWER_RUN_PROCESSES:
                # This process runs this one run and exits: Flower's failure report need not
                # repeat the error under a page of its own frames (it prints the message alone).
                sys.tracebacklimit = 0
            raise
        if cfg.server_threads > 0:
            torch.set_num_threads(cfg.server_threads)
        run_server(grid, cfg, on_result, on_event, expected_nodes)

    return app


def launched_by_flower(grid: Grid, cfg: AppConfig) -> AppConfig:
    """Explain the run-config keys this run ignores, and check that the federation has
    ``num-clients`` SuperNodes (:mod:`fedcond.simulations.federation`); ``num-clients`` 0
    becomes the federation's size. Returns the settings the run uses."""
    from dataclasses import replace  # only Flower's launch resolves the size

    from fedcond.simulations.federation import check_federation, ignored_settings

    for note in ignored_settings(cfg):
        log(WARNING, "note: %s", note)
    size = check_federation(grid, cfg, log=lambda text: log(INFO, "%s", text))
    given = "" if cfg.num_clients else ", the federation's size"
    log(INFO, "%s: %d SuperNodes, one per partition (num-clients = %d%s)", cfg.name, size, size, given)
    return replace(cfg, num_clients=size)


app = make_server_app()
