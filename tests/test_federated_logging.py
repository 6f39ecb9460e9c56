"""Flower's log goes to flower.log, not the console; run_simulation's deprecation is dropped."""

from __future__ import annotations

import io
import logging
import warnings
from logging import INFO

import pytest
from flwr.supercore.logger import ConsoleHandler, log, warn_deprecated_feature

from fedcond.simulations.flower_log import flower_log_to_file, without_run_simulation_deprecation

DEPRECATION = ("The `run_simulation` function is deprecated and will be removed in a future version of Flower. "
               "Please use `flwr run` in the CLI instead to run your simulation.")


@pytest.fixture()
def console():
    """What Flower's console handler writes (its stream is fixed when flwr is imported)."""
    handler = next(h for h in logging.getLogger("flwr").handlers if isinstance(h, ConsoleHandler))
    stream = io.StringIO()
    saved = handler.setStream(stream)
    yield stream
    handler.setStream(saved)


def test_flower_log_and_warnings_go_to_the_file_not_the_console(tmp_path, console, capsys):
    path = tmp_path / "flower.log"
    handlers = list(logging.getLogger("flwr").handlers)
    with flower_log_to_file(path), without_run_simulation_deprecation():
        log(INFO, "[ROUND 1/1] from Flower")
        warn_deprecated_feature(DEPRECATION)
        warn_deprecated_feature("some other feature")  # other deprecations still reach the log
        warnings.warn("Tip: a Ray FutureWarning", FutureWarning, stacklevel=1)
    assert console.getvalue() == "" and capsys.readouterr().err == ""
    text = path.read_text()
    assert "[ROUND 1/1] from Flower" in text and "some other feature" in text and "Ray FutureWarning" in text
    assert "run_simulation" not in text
    assert logging.getLogger("flwr").handlers == handlers  # the console handler is back


def test_outside_the_block_flower_logs_to_the_console_again(tmp_path, console):
    with flower_log_to_file(tmp_path / "flower.log"):
        pass
    log(INFO, "after the block")
    assert "after the block" in console.getvalue()


def test_only_the_run_simulation_deprecation_is_dropped(console):
    with without_run_simulation_deprecation():
        warn_deprecated_feature(DEPRECATION)
        warn_deprecated_feature("some other feature")
    assert "run_simulation" not in console.getvalue() and "some other feature" in console.getvalue()
    warn_deprecated_feature(DEPRECATION)  # the filter is gone after the block
    assert "run_simulation" in console.getvalue()


def test_a_rerun_appends_after_a_marker_and_keeps_the_earlier_log(tmp_path, console):
    """A resumed `fedcond federate` reopens flower.log: the first run's log stays, and one
    line marks where the rerun began (a fresh file has no marker)."""
    from fedcond.simulations.flower_log import RESUME_MARKER

    path = tmp_path / "flower.log"
    with flower_log_to_file(path):
        log(INFO, "first run, round 1")
    first = path.read_text()
    assert "first run, round 1" in first and RESUME_MARKER not in first
    with flower_log_to_file(path):
        log(INFO, "resumed run, round 2")
    text = path.read_text()
    assert text.startswith(first)  # nothing the first run wrote is truncated or overwritten
    rest = text[len(first):].splitlines()
    assert rest[0].startswith(RESUME_MARKER) and "resumed run, round 2" in rest[1], rest


def test_a_private_log_has_no_timestamps_and_withholds_durations(tmp_path, console):
    """A DP experiment's flower.log: a run's time grows with the private data, so none is kept."""
    import re

    from fedcond.simulations.flower_log import RESUME_MARKER, TIME_WITHHELD

    path = tmp_path / "flower.log"
    for _ in range(2):  # the second opening writes the resume marker
        with flower_log_to_file(path, private=True):
            log(INFO, "Strategy execution finished in %.2fs", 110.85)
            log(INFO, "Run finished 3 round(s) in 12 s, then 2.5 seconds")
    text = path.read_text()
    assert "finished in " + TIME_WITHHELD in text and "3 round(s) in " + TIME_WITHHELD in text
    assert RESUME_MARKER in text and not re.search(r"\d{4}-\d\d-\d\d|\d\d:\d\d|110|12 s|2\.5", text), text
    with flower_log_to_file(path):  # outside DP the log keeps both
        log(INFO, "finished in %.2fs", 1.5)
    assert "finished in 1.50s" in path.read_text() and re.search(r"\d{4}-\d\d-\d\d", path.read_text())


def test_a_root_handler_does_not_bring_flowers_log_back_to_the_console(tmp_path, console, capsys):
    """Opacus calls logging.basicConfig on import: a root handler on stderr. Within the block
    Flower's records still go to the file only."""
    import sys

    root, before = logging.getLogger(), logging.getLogger("flwr").propagate
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    try:
        with flower_log_to_file(tmp_path / "flower.log"):
            log(INFO, "[ROUND 1/1] only in the file")
            logging.getLogger("flwr").debug("a debug record")
    finally:
        root.removeHandler(handler)
    assert "only in the file" not in capsys.readouterr().err and console.getvalue() == ""
    assert "only in the file" in (tmp_path / "flower.log").read_text()
    assert logging.getLogger("flwr").propagate == before  # as it was outside the block
