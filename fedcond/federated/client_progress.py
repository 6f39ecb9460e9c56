"""How far each client's distillation has got, shared through files while a round runs.

A FedCond client distills for seconds to many minutes (DP-DM's 1,000 iterations, CIFAR-10)
before it replies, and in simulation it runs in another process (a Ray actor). So that the
console can show that work, a client with a checkpoint folder writes its progress there,
``<checkpoint_dir>/progress/partition-<id>.json`` (``{"round", "step", "total"}``), at most
once a second and atomically; :func:`read_progress` sums up one round's files for a display.
Iteration counts are the method's settings, public also under DP.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

PROGRESS_FOLDER = "progress"


def progress_writer(checkpoint_dir: str, partition_id: int, server_round: int,
                    every_s: float = 1.0) -> Callable[[int, int, dict[str, float]], None]:
    """A distillation progress callback ``fn(done, total, metrics)`` (the iterations finished, as
    fedcond's distillers report them) writing this client's file."""
    path = Path(checkpoint_dir) / PROGRESS_FOLDER / f"partition-{partition_id}.json"
    last = [0.0]

    def write(done: int, total: int, _metrics: dict[str, float]) -> None:  # done: iterations finished (1-based)
        now = time.monotonic()
        if now - last[0] < every_s and done < total:
            return
        last[0] = now
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"round": server_round, "step": done, "total": total}))
            os.replace(tmp, path)
        except OSError:  # progress is a courtesy: never fail a client over it
            pass

    return write


def read_progress(checkpoint_dir: Path, server_round: int) -> dict[str, Any] | None:
    """``{"clients": n, "fraction": mean share of iterations done}`` over the clients that
    reported in ``server_round``, or None when none has."""
    shares = []
    for path in (checkpoint_dir / PROGRESS_FOLDER).glob("partition-*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced: read it next time
            continue
        if state.get("round") == server_round and state.get("total"):
            shares.append(min(1.0, state["step"] / state["total"]))
    if not shares:
        return None
    return {"clients": len(shares), "fraction": sum(shares) / len(shares)}
