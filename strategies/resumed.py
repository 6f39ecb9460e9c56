"""Continuing a strategy after round k: round numbering and the strategy's own state.

Flower's ``Strategy.start`` always counts rounds from 1. :class:`FromRound` wraps a
strategy so that, started with the remaining number of rounds, every call it forwards
carries the true round (k + 1, k + 2, ...): clients seed their work by round, FedCond
seeds its server training by round and the byte ledger is keyed by round, so a resumed
run does exactly what the uninterrupted one did. Only Flower's "[ROUND i/n]" log lines
count from 1 again.

:func:`strategy_state` / :func:`load_strategy_state` carry what a strategy remembers
between rounds: FedCond's pool (its own ``state``), the server optimiser moments of
Flower's FedAdam/FedYogi/FedAdagrad (``m_t``, ``v_t``); FedAvg and FedProx remember
nothing beyond the global model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

_MOMENTS = ("m_t", "v_t")  # Flower's FedOpt family (FedAdam, FedYogi, FedAdagrad)


class FromRound(Strategy):
    """``inner`` with every round number shifted by ``done`` (rounds already finished)."""

    def __init__(self, inner: Strategy, done: int) -> None:
        self.inner, self.done = inner, done

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_train(server_round + self.done, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.inner.aggregate_train(server_round + self.done, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round + self.done, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round + self.done, replies)


def strategy_state(strategy: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What ``strategy`` remembers between rounds, as tensors and JSON."""
    if hasattr(strategy, "state"):
        return strategy.state()
    tensors = {}
    for name in _MOMENTS:
        for key, value in (getattr(strategy, name, None) or {}).items():
            tensors[f"{name}/{key}"] = torch.from_numpy(np.ascontiguousarray(value))
    return tensors, {}


def load_strategy_state(strategy: Any, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Give ``strategy`` back what :func:`strategy_state` took from it."""
    if hasattr(strategy, "load_state"):
        strategy.load_state(tensors, state)
        return
    for name in _MOMENTS:
        values = {k.split("/", 1)[1]: t.numpy() for k, t in tensors.items() if k.startswith(f"{name}/")}
        if values:
            setattr(strategy, name, values)
