"""A client's distillation progress reaches the console while it works (it replies only when done)."""

from __future__ import annotations

import contextlib
import json
import time

from fedcond.federated.client_progress import progress_writer, read_progress


def test_a_client_writes_its_progress_at_most_once_a_second_and_always_its_last_step(tmp_path):
    write = progress_writer(str(tmp_path), partition_id=3, server_round=2, every_s=60.0)
    write(10, 100, {})  # distillers report the iterations done
    write(20, 100, {})  # within the minute: not written
    path = tmp_path / "progress" / "partition-3.json"
    assert json.loads(path.read_text()) == {"round": 2, "step": 10, "total": 100}
    write(100, 100, {})  # the last step is always written
    assert json.loads(path.read_text())["step"] == 100
    progress_writer(str(tmp_path), partition_id=4, server_round=2)(50, 100, {})
    progress_writer(str(tmp_path), partition_id=5, server_round=1)(10, 10, {})  # an earlier round: not counted
    state = read_progress(tmp_path, server_round=2)
    assert state == {"clients": 2, "fraction": 0.75}
    assert read_progress(tmp_path, server_round=3) is None


def test_the_console_shows_how_far_the_clients_have_got_before_they_reply(tmp_path, monkeypatch):
    from fedcond.commands import federate
    from fedcond.federated.events import RunStarted

    updates = []

    @contextlib.contextmanager
    def fake_bar(description, total, timed=True):
        yield lambda *args, **kwargs: updates.append(kwargs)

    monkeypatch.setattr(federate, "progress_bar", fake_bar)
    monkeypatch.setattr(federate.RunProgress, "poll_s", 0.05)
    display = federate.RunProgress(checkpoints=tmp_path)
    display(RunStarted("fedcond", 1, 10))
    progress_writer(str(tmp_path / "fedcond"), partition_id=0, server_round=1)(30, 100, {})
    deadline = time.monotonic() + 10
    while not any("distilling" in u.get("now", "") for u in updates) and time.monotonic() < deadline:
        time.sleep(0.05)
    display.close()
    assert any(u.get("now") == "clients distilling: 1 started, 30% of their iterations done" for u in updates)


def test_a_dp_runs_bars_show_no_time(monkeypatch):
    """A DP run's time grows with the private data: its bars have no elapsed or remaining time."""
    from fedcond.commands import federate
    from fedcond.federated.events import RunStarted

    seen = []

    @contextlib.contextmanager
    def fake_bar(description, total, timed=True):
        seen.append(timed)
        yield lambda *args, **kwargs: None

    monkeypatch.setattr(federate, "progress_bar", fake_bar)
    for private in (False, True):
        display = federate.RunProgress(private=private)
        display(RunStarted("fedcond", 1, 10))
        display.close()
    assert seen == [True, False]
