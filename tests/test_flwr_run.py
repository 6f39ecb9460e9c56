"""``flwr run .`` as the README says: plain, from a fresh Flower home, offline (the app runs in
this environment; nothing is installed), and again after the local SuperLink restarts.

``num-clients`` is the federation's size by default; an explicit one the federation cannot
serve stops the run at once with one line saying how to fix it; a run-config key the run ignores is explained. The
local SuperLink listens on ports of its own here (Flower's are fixed per machine, not per
Flower home), and every process Flower started is stopped and reaped at the end.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = "method='random' ipc=2 server-epochs=2 num-clients=3"  # seconds of work per client


@pytest.fixture()
def processes(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    return importlib.import_module("flower_processes")


def test_flwr_run_from_a_fresh_flower_home_and_after_a_superlink_restart(processes, tmp_path):
    assert shutil.which("flwr") and shutil.which("flower-superlink"), (
        "flwr / flower-superlink not on PATH: Flower is a dependency of fedcond (pip install -e .)")
    home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(processes.free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(processes.free_port())}
    readme = ["flwr", "run", ".", "--stream", "--federation-config", "num-supernodes=3"]
    with processes.Supervisor() as sup:
        # Plain `flwr run .` (the README's first line, with its run config as shipped): num-clients
        # defaults to the federation's size, Flower's default local federation of 2 SuperNodes.
        plain = sup.run(["flwr", "run", ".", "--stream"], env, cwd=REPO, timeout=580)
        assert "fedcond: 2 SuperNodes, one per partition (num-clients = 2, the federation's size)" in plain.stdout, (
            plain.stdout[-3000:])
        assert "configure_train: Sampled 2 nodes (out of 2)" in plain.stdout
        assert "fedcond: final accuracy" in plain.stdout
        assert "error:" not in plain.stdout and "uv sync" not in plain.stdout

        # An explicit num-clients = 3 that the federation (2 SuperNodes) cannot serve: one line, no work.
        wrong = sup.run(["flwr", "run", ".", "--stream", "--run-config", SMALL], env, cwd=REPO, timeout=280)
        assert ('error: the federation has 2 SuperNode(s) but the run config says num-clients = 3: run '
                '`flwr run . --federation-config "num-supernodes=3"`') in wrong.stdout, wrong.stdout[-3000:]
        assert "configure_train" not in wrong.stdout and "final accuracy" not in wrong.stdout

        # Restart the local SuperLink (Flower's docs: stop its process); a sized federation runs, and a
        # key this run ignores is explained.
        links = [p for p in sup.descendants() if "flower-superlink" in processes.command_line(p)]
        assert len(links) == 1, sup.leftovers()
        links[0].terminate()
        links[0].wait(timeout=30)
        time.sleep(1)
        again = sup.run(readme + ["--run-config", f"{SMALL} rounds=3"], env, cwd=REPO, timeout=280)
        assert "Starting local SuperLink" in again.stdout
        _assert_ran_on_three_supernodes(again.stdout)
        assert "note: rounds = 3 has no effect: one-shot FedCond runs exactly one round" in again.stdout
    assert sup.leftovers() == []
    assert not (home / "runtime-envs").exists()  # offline: no environment was installed for the app


def _assert_ran_on_three_supernodes(output: str) -> None:
    assert "fedcond: 3 SuperNodes, one per partition (num-clients = 3)" in output, output[-3000:]
    assert "configure_train: Sampled 3 nodes (out of 3)" in output and "fedcond: final accuracy" in output
    assert "error:" not in output and "uv sync" not in output
