"""Where Flower's log goes while ``fedcond federate`` simulates: a file, not the console.

Flower logs every round at INFO on logger ``flwr`` (strategy summaries, sampling, metric
dicts, client tracebacks relayed by Ray), which buries fedcond's own one-line-per-strategy
progress. :func:`flower_log_to_file` moves that logger's console output into
``<out>/flower.log`` for the duration of the runs, together with the Python warnings
raised meanwhile (Ray's ``FutureWarning`` tips), and puts everything back afterwards.
A rerun in the same folder appends after a marker line: nothing an earlier run logged is lost.

:func:`without_run_simulation_deprecation` drops exactly one record, with or without the
file: Flower's "``run_simulation`` is deprecated" warning.
Flower 1.41 recommends ``flwr run`` instead, which submits the app to a SuperLink (started
in the background under ``$FLWR_HOME``) and runs the ServerApp/ClientApps in separate
processes. The runner needs what only an in-process run gives: app objects built with
per-strategy overrides and a callback receiving each strategy's record, no daemon left
behind, no ``~/.flwr`` state. No in-process replacement exists in 1.41 (the engine behind
``run_simulation`` is private), so the warning — repeated once per strategy — says nothing
a user can act on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

FLOWER_LOGGER = "flwr"
RUN_SIMULATION_DEPRECATION = "The `run_simulation` function is deprecated"
RESUME_MARKER = "===== fedcond: run started again in this folder"


class _DropRunSimulationDeprecation(logging.Filter):
    """Rejects Flower's ``run_simulation`` deprecation record and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return RUN_SIMULATION_DEPRECATION not in record.getMessage()


@contextmanager
def without_run_simulation_deprecation() -> Iterator[None]:
    """Within the block, logger ``flwr`` drops the ``run_simulation`` deprecation warning."""
    flwr_logger = logging.getLogger(FLOWER_LOGGER)
    deprecation = _DropRunSimulationDeprecation()
    flwr_logger.addFilter(deprecation)
    try:
        yield
    finally:
        flwr_logger.removeFilter(deprecation)


@contextmanager
def flower_log_to_file(path: Path) -> Iterator[Path]:
    """Within the block, logger ``flwr`` and Python warnings write to ``path`` instead of the
    console. The file is appended to, never truncated: a rerun in the same folder (a resume)
    keeps the earlier runs' log and starts with a line saying where it began."""
    from flwr.supercore.logger import ConsoleHandler  # Flower only in adapters

    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = path.exists() and path.stat().st_size > 0
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    if earlier:
        with open(path, "a", encoding="utf-8") as log_file:
            log_file.write(resume_marker())
    handler.setLevel(logging.DEBUG if _flower_debug() else logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)-7s %(asctime)s %(name)s: %(message)s"))

    flwr_logger = logging.getLogger(FLOWER_LOGGER)
    consoles = [h for h in flwr_logger.handlers if isinstance(h, ConsoleHandler)]
    warnings_logger = logging.getLogger("py.warnings")
    warnings_propagate = warnings_logger.propagate
    for h in consoles:
        flwr_logger.removeHandler(h)
    flwr_logger.addHandler(handler)
    warnings_logger.addHandler(handler)
    warnings_logger.propagate = False  # else the root logger's last-resort handler prints them
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        logging.captureWarnings(False)
        warnings_logger.propagate = warnings_propagate
        warnings_logger.removeHandler(handler)
        flwr_logger.removeHandler(handler)
        for h in consoles:
            flwr_logger.addHandler(h)
        handler.close()


def resume_marker() -> str:
    """The line that separates a rerun's log from the earlier runs' log above it."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"{RESUME_MARKER} at {stamp} (it resumes from the checkpoints unless --fresh); its log follows, "
            "the earlier runs' log is above\n")


def _flower_debug() -> bool:
    """Flower's own switch for debug logs (``FLWR_LOG_LEVEL=DEBUG``) also applies to the file."""
    return os.environ.get("FLWR_LOG_LEVEL", "").upper() == "DEBUG"
