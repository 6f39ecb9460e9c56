"""Server strategies, by name: FedCond (ours), FedDM and FedAF (distilled, as published),
Flower's FedAvg, FedProx and FedAdam, and DP-FedAvg (FedAvg over DP-SGD clients).

The baselines are Flower's own classes, unchanged; communication is metered by the grid
(``fedcond.federated.comms``), so no strategy needs to know it is being measured.
"""

from __future__ import annotations

from typing import Any

from fedcond.data import ImageDataset
from fedcond.federated.comms import CommLedger
from fedcond.federated.config import AppConfig
from fedcond.federated.records import ARRAYRECORD_KEY, CONFIGRECORD_KEY


def drop_ids(records: list[Any], weighted_by_key: str) -> Any:
    """Flower's weighted metric average, minus ``partition-id`` (an id, not a metric)."""
    from flwr.app import MetricRecord
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    out = aggregate_metricrecords(records, weighted_by_key)
    return MetricRecord({k: v for k, v in out.items() if k != "partition-id"})


def build_strategy(cfg: AppConfig, data: ImageDataset, ledger: CommLedger,
                   expected_nodes: int | None = None) -> Any:
    """The strategy named by ``cfg.strategy`` with the run's sampling fraction.

    ``expected_nodes``: the federation's size where the caller knows it (a simulation it
    started). Flower sizes a round's sample from the nodes connected at that moment, so the
    first round after a start — a resumed run's round k + 1 too — could go to the one or two
    nodes registered so far; with the size known, sampling waits for all of them.
    """
    nodes = expected_nodes or 1
    common = {"fraction_train": cfg.fraction, "min_train_nodes": max(1, int(nodes * cfg.fraction)),
              "min_available_nodes": nodes,
              "arrayrecord_key": ARRAYRECORD_KEY, "configrecord_key": CONFIGRECORD_KEY}  # what clients read
    if cfg.distills:  # the servers that pool distilled sets: FedCond's, with what each reads of the settings
        from fedcond.federated.server_training import pool_trainer  # torch, for these servers

        pooled = {**common, "ipc": cfg.ipc, "max_payload_bytes": cfg.max_payload_bytes, "ledger": ledger,
                  "iterative": cfg.effective_mode == "iterative", "method": cfg.method,
                  "iterations": cfg.client_iterations}
        if cfg.strategy == "feddm":
            from fedcond.strategies.feddm import FedDM

            return FedDM(data, pool_trainer(data, cfg), **pooled, radius=cfg.feddm_radius)
        if cfg.strategy == "fedaf":
            from fedcond.strategies.fedaf import FedAF

            return FedAF(data, pool_trainer(data, cfg), **pooled, lambda_global=cfg.fedaf_lambda_global,
                         temperature=cfg.fedaf_temperature, lambda_local=cfg.fedaf_lambda_local)
        from fedcond.strategies.fedcond import FedCond

        return FedCond(data, pool_trainer(data, cfg), **pooled)
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    base = {**common, "fraction_evaluate": 0.0, "min_evaluate_nodes": 0, "train_metrics_aggr_fn": drop_ids}
    if cfg.strategy == "fedavg":
        return FedAvg(**base)
    if cfg.strategy == "dpfedavg":  # FedAvg over DP-SGD clients: equal weights (clients state no exact size)
        from fedcond.federated.dp_sgd import plan_for
        from fedcond.federated.records import new_model
        from fedcond.strategies.dpfedavg import DPFedAvg

        return DPFedAvg(plan_for(cfg), new_model(data, cfg), cfg.model, **base)
    if cfg.strategy == "fedprox":
        return FedProx(**base, proximal_mu=cfg.proximal_mu)
    if cfg.strategy == "fedadam":
        return FedAdam(**base, eta=cfg.server_lr, eta_l=cfg.lr)
    raise ValueError(f"unknown strategy {cfg.strategy!r}")
