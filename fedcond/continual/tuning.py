"""Choosing a baseline's settings on validation data: grid points, the winner, its edges.

Every choice a continual comparison makes — a grid's winner, the epochs per experience, the
memory batch — is made on the validation share carved from each experience's training data
(:func:`fedcond.continual.benchmarks.make_benchmark` with ``evaluate_on="validation"``: the
test images are not in that benchmark at all). :func:`require_validation` refuses any other
benchmark, so a tuner cannot be handed the test stream. Test accuracy is measured once,
afterwards, for the chosen setting.

A winner on the edge of its grid may be beaten just outside it: :func:`edges` names every
numeric dimension whose winning value is the grid's smallest or largest, and
:func:`extend` adds one step beyond each (learning rates x / 3, epochs x 2 or / 2) within
limits, so a tuner can go on until no edge is hit or say which edge stopped it and why.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

from fedcond.errors import FedcondError

SCORE = "validation_accuracy"
# one step beyond an edge, and the limits a grid is not extended past
STEP = {"lr": 3.0, "buffer_lr": 3.0, "epochs": 2.0, "buffer_epochs": 2.0}
LIMITS = {"lr": (1e-4, 1.0), "buffer_lr": (1e-4, 1.0), "epochs": (1, 40), "buffer_epochs": (10, 600)}


def require_validation(bench: Any) -> None:
    """Refuse a benchmark whose evaluation stream is not the validation share."""
    if getattr(bench, "evaluated_on", "test") != "validation":
        raise FedcondError("tuning scores the validation stream only: build the benchmark with "
                           "evaluate_on='validation' (the test images are then not in it)")


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every point of a grid, as ``{dimension: value}``."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def winner(rows: Sequence[Mapping[str, Any]], score: str = SCORE) -> Mapping[str, Any]:
    """The row with the best ``score`` (validation accuracy); the first such row on ties."""
    if not rows:
        raise ValueError("no tuning rows to choose from")
    return max(rows, key=lambda r: r[score])


def edges(best: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[tuple[str, str]]:
    """(dimension, "low" or "high") for each numeric dimension of more than one value whose
    winning value is the grid's smallest or largest."""
    out = []
    for dim, values in grid.items():
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if dim not in best or len(set(numbers)) < 2:
            continue
        if best[dim] == min(numbers):
            out.append((dim, "low"))
        elif best[dim] == max(numbers):
            out.append((dim, "high"))
    return out


def extend(grid: Mapping[str, Sequence[Any]], hit: Sequence[tuple[str, str]]) -> tuple[dict[str, list[Any]], list[str]]:
    """The grid with one value added beyond each edge hit, and why an edge was not extended
    (no step known for it, or its limit reached)."""
    new = {k: list(v) for k, v in grid.items()}
    stopped = []
    for dim, side in hit:
        if dim not in STEP:
            stopped.append(f"{dim} at its {side} edge: no extension rule")
            continue
        low, high = LIMITS[dim]
        edge = min(new[dim]) if side == "low" else max(new[dim])
        value = edge / STEP[dim] if side == "low" else edge * STEP[dim]
        value = round(value) if isinstance(edge, int) else float(f"{value:.3g}")
        if not low <= value <= high or value == edge:
            stopped.append(f"{dim} at its {side} edge {edge}: the next value {value} is past the limit {low}-{high}")
            continue
        new[dim] = sorted({*new[dim], value})
    return new, stopped
