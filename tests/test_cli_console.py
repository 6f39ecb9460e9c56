"""What the console says while a federated comparison runs, and what ``--help`` shows."""

from __future__ import annotations

import re

from rich.console import Console
from typer.testing import CliRunner

from fedcond.cli import app
from fedcond.commands import COMMANDS


def test_round_lines_give_each_round_its_own_time_and_say_the_total_is_elapsed(monkeypatch):
    from fedcond.commands import federate
    from fedcond.federated.events import RoundFinished

    console = Console(record=True, width=200)
    monkeypatch.setattr(federate, "console", console)
    progress = federate.RunProgress()
    for r, seconds in ((1, 25.0), (2, 28.0), (3, 31.0)):
        progress(RoundFinished("fedavg", r, 3, 0.9, 1000 * r, 1000 * r, 10, 0, seconds))
    progress(RoundFinished("fedprox", 4, 5, 0.9, 1000, 1000, 10, 0, 40.0))  # resumed at round 4: no earlier round
    lines = console.export_text().splitlines()
    assert lines[0].endswith("round 25 s, 25 s elapsed") and lines[1].endswith("round 3 s, 28 s elapsed")
    assert lines[2].endswith("round 3 s, 31 s elapsed") and lines[3].endswith(", 40 s elapsed")
    assert "round 40 s" not in lines[3]


def test_help_is_plain_text_without_restructuredtext_markup():
    runner = CliRunner()
    for args in [["--help"]] + [[name, "--help"] for name in COMMANDS]:
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, (args, result.output)
        assert "``" not in result.output, (args, [x for x in result.output.splitlines() if "``" in x])
        assert not re.search(r":(func|class|mod|meth|data):`", result.output), args
