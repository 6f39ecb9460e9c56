"""Issue 15, many clients: a 100-client simulation, the progress it shows, its memory record."""

from __future__ import annotations

import json
from contextlib import contextmanager

from fedcond.federated.config import FederateConfig
from fedcond.federated.events import ClientReplied, RoundFinished, RunFinished, RunStarted


def test_progress_shows_clients_finished_this_round_and_sizes_the_bar_to_the_sampled(monkeypatch):
    import fedcond.commands.federate as federate

    calls = []

    @contextmanager
    def recording_bar(description, total=None, timed=True):
        calls.append(("start", description, total))
        yield lambda completed, total=None, **metrics: calls.append((completed, total, metrics))

    monkeypatch.setattr(federate, "progress_bar", recording_bar)
    progress = federate.RunProgress()
    progress(RunStarted("fedavg", num_rounds=2, num_clients=100))
    for rnd in (1, 2):
        for replied in range(1, 11):  # 10 % of 100 clients sampled each round
            progress(ClientReplied("fedavg", rnd, replied, 10, ok=True))
    progress.close()
    assert calls[0] == ("start", "fedavg", 200)
    assert calls[2] == (1, 20, {"round": "1/2", "clients": "1/10"})  # the bar now counts sampled clients
    # after a round's last reply the server works alone, and the bar says so
    assert calls[-1] == (20, 20, {"round": "2/2", "clients": "10/10", "now": "server aggregates, trains, evaluates"})
    assert [c[0] for c in calls[2:]] == list(range(1, 21))


def test_a_hundred_digits_clients_run_with_progress_and_peak_memory(tmp_path):
    """One-shot FedCond with 100 clients on digits (about 13 images each) in one test."""
    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config

    cfg = FederateConfig(dataset="digits", num_clients=100, partition="dirichlet", alpha=0.5, ipc=1, iterations=2,
                         server_epochs=1, storage_dtypes="float32", random_reference=False, herding_reference=False,
                         seed=0)
    events = []
    result = run_experiment(cfg, ["fedcond"], tmp_path, backend_config(1.0, 0.0, 2), reference="none",
                            on_event=events.append)
    replies = [e for e in events if isinstance(e, ClientReplied)]
    assert [e.replied for e in replies] == list(range(1, 101)) and all(e.sampled == 100 for e in replies)
    assert isinstance(events[0], RunStarted) and isinstance(events[-1], RunFinished)
    assert sum(isinstance(e, RoundFinished) for e in events) == 1
    (run,) = result["runs"]
    assert len(run["pool_provenance"]) == 100 and run["clients_lost_total"] == 0
    assert 0 < run["rounds"][0]["clients_seconds"] <= run["wall_seconds"]
    saved = json.loads((tmp_path / "results.json").read_text())
    memory = saved["peak_memory"]
    # Ray's workers are other processes: the tree's peak is above this process's own
    assert memory["processes_at_peak"] > 1 and memory["rss_bytes"] > memory["main_rss_bytes"] > 0
    assert saved["runs"][0]["peak_memory"]["rss_bytes"] > 0
    assert saved["cpu_seconds"] >= saved["runs"][0]["cpu_seconds"] > 0
