"""The Flower ServerApp: run one strategy, meter every message, evaluate every round.

``app`` is what ``flwr run .`` and a SuperLink load (settings from the run config);
:func:`make_server_app` builds one with overrides and a result callback for the in-process
runner. The run's record — accuracy after each round, bytes per client per round and
cumulative, what was lost — goes to the callback and, when ``out-dir`` is set, to
``<out-dir>/strategy-<name>.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from flwr.app import ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log
from logging import INFO

from fedcond.federated.central import evaluate_arrays, new_model
from fedcond.federated.comms import CommLedger, metered_grid
from fedcond.federated.config import FederateConfig
from fedcond.federated.data_cache import get_dataset
from fedcond.federated.records import model_to_record


def run_server(grid: Grid, cfg: FederateConfig, on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``cfg.strategy`` on ``grid``; return the run's record (see module docstring)."""
    from strategies import build_strategy  # noqa: PLC0415

    data = get_dataset(cfg.dataset, cfg.data_dir)
    ledger = CommLedger()
    strategy = build_strategy(cfg, data, ledger)
    accuracy: dict[int, float] = {}
    times: dict[int, float] = {}
    start = time.perf_counter()

    def evaluate_fn(server_round: int, arrays: Any) -> MetricRecord:
        accuracy[server_round] = evaluate_arrays(data, cfg, arrays)
        times[server_round] = time.perf_counter() - start
        return MetricRecord({"accuracy": accuracy[server_round]})

    initial = model_to_record(new_model(data, cfg))
    strategy.start(grid=metered_grid(grid, ledger), initial_arrays=initial, num_rounds=cfg.effective_rounds,
                   train_config=ConfigRecord(), evaluate_fn=evaluate_fn, timeout=cfg.round_timeout)
    record = build_record(cfg, ledger, accuracy, times, strategy)
    log(INFO, "%s: final accuracy %.4f, upload %d bytes, download %d bytes", cfg.strategy,
        record["final_accuracy"], record["upload_bytes"], record["download_bytes"])
    if on_result is not None:
        on_result(record)
    if cfg.out_dir:
        path = Path(cfg.out_dir) / f"strategy-{cfg.strategy}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_record(cfg: FederateConfig, ledger: CommLedger, accuracy: dict[int, float], times: dict[int, float],
                 strategy: Any) -> dict[str, Any]:
    """The per-strategy entry of results.json: rounds with cumulative bytes, and losses."""
    rounds, up, down = [], 0, 0
    for r in range(1, cfg.effective_rounds + 1):
        ru, rd = ledger.round_totals(r)
        up, down = up + ru, down + rd
        lost = ledger.lost(r)
        rounds.append({
            "round": r, "accuracy": accuracy.get(r), "upload_bytes": up, "download_bytes": down,
            "round_upload_bytes": ru, "round_download_bytes": rd, "seconds": times.get(r),
            "clients_sampled": len(ledger.rounds.get(r, {})), "clients_lost": len(lost),
            "lost": [{"node_id": c.node_id, "status": c.status, "reason": c.reason} for c in lost],
            "clients": ledger.to_json(r),
        })
    out = {"strategy": cfg.strategy, "mode": cfg.effective_mode if cfg.strategy.startswith("fedcond") else None,
           "initial_accuracy": accuracy.get(0), "final_accuracy": rounds[-1]["accuracy"] if rounds else None,
           "upload_bytes": up, "download_bytes": down, "rounds": rounds,
           "clients_lost_total": sum(r["clients_lost"] for r in rounds)}
    if hasattr(strategy, "provenance"):
        out["pool_provenance"] = strategy.provenance()
        out["rejections"] = strategy.rejections
    return out


def make_server_app(overrides: dict[str, Any] | None = None,
                    on_result: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    """A ServerApp reading its settings from the run config, then ``overrides``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = FederateConfig.from_run_config(context.run_config, overrides)
        if cfg.server_threads > 0:
            torch.set_num_threads(cfg.server_threads)
        run_server(grid, cfg, on_result)

    return app


app = make_server_app()
