"""Where Flower's log goes while ``fedcond federate`` simulates: a file, not the console.

Flower logs every round at INFO on logger ``flwr`` (strategy summaries, sampling, metric
dicts, client tracebacks relayed by Ray), which buries fedcond's own one-line-per-strategy
progress. :func:`flower_log_to_file` moves that logger's console output into
``<out>/flower.log`` for the duration of the runs, together with the Python warnings
raised meanwhile (Ray's ``FutureWarning`` tips), and puts everything back afterwards.
A rerun in the same folder appends after a marker line: nothing an earlier run logged is lost.
In a DP experiment (``private=True``) the log carries no time: lines have no timestamps, the
marker no date, and durations in Flower's messages ("finished in 110.85s") are withheld,
because a run's time grows with the size of the private data (:mod:`fedcond.federated.dp_folder`).

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
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

FLOWER_LOGGER = "flwr"
RUN_SIMULATION_DEPRECATION = "The `run_simulation` function is deprecated"
RESUME_MARKER = "===== fedcond: run started again in this folder"
TIME_WITHHELD = "[time withheld: DP]"
# a duration in a log message: "110.85s", "3 s", "2.5 seconds" (not "round(s)": a digit comes first)
_DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:e-?\d+)?\s?(?:s|sec|secs|seconds)\b")


class _DropRunSimulationDeprecation(logging.Filter):
    """Rejects Flower's ``run_simulation`` deprecation record and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return RUN_SIMULATION_DEPRECATION not in record.getMessage()


class _WithholdDurations(logging.Filter):
    """Rewrites every duration in a record's message to :data:`TIME_WITHHELD` (DP logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        withheld = _DURATION.sub(TIME_WITHHELD, message)
        if withheld != message:
            record.msg, record.args = withheld, None
        return True


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
def flower_log_to_file(path: Path, private: bool = False) -> Iterator[Path]:
    """Within the block, logger ``flwr`` and Python warnings write to ``path`` instead of the
    console. The file is appended to, never truncated: a rerun in the same folder (a resume)
    keeps the earlier runs' log and starts with a line saying where it began. ``private``:
    no timestamps and no durations (a DP experiment's folder)."""
    from flwr.supercore.logger import ConsoleHandler  # Flower only in adapters

    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = path.exists() and path.stat().st_size > 0
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    if earlier:
        with open(path, "a", encoding="utf-8") as log_file:
            log_file.write(resume_marker(private))
    handler.setLevel(logging.DEBUG if _flower_debug() else logging.INFO)
    stamp = "" if private else " %(asctime)s"
    handler.setFormatter(logging.Formatter(f"%(levelname)-7s{stamp} %(name)s: %(message)s"))
    if private:
        handler.addFilter(_WithholdDurations())

    flwr_logger = logging.getLogger(FLOWER_LOGGER)
    consoles = [h for h in flwr_logger.handlers if isinstance(h, ConsoleHandler)]
    warnings_logger = logging.getLogger("py.warnings")
    warnings_propagate = warnings_logger.propagate
    for h in consoles:
        flwr_logger.removeHandler(h)
    flwr_logger.addHandler(handler)
    # Not up to the root logger either: a library that calls logging.basicConfig (Opacus does, on
    # import) would print every Flower record, DEBUG included and timestamped, on the console.
    propagate, flwr_logger.propagate = flwr_logger.propagate, False
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
        flwr_logger.propagate = propagate
        for h in consoles:
            flwr_logger.addHandler(h)
        handler.close()


def resume_marker(private: bool = False) -> str:
    """The line that separates a rerun's log from the earlier runs' log above it (dated unless
    ``private``)."""
    stamp = "" if private else " at " + datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"{RESUME_MARKER}{stamp} (it resumes from the checkpoints unless --fresh); its log follows, "
            "the earlier runs' log is above\n")


def _flower_debug() -> bool:
    """Flower's own switch for debug logs (``FLWR_LOG_LEVEL=DEBUG``) also applies to the file."""
    return os.environ.get("FLWR_LOG_LEVEL", "").upper() == "DEBUG"
