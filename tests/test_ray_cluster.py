"""fedcond's simulation on an existing Ray cluster, through Flower's Simulation Runtime: the
backend's ``init_args`` carry the cluster's ``address`` (and no CPU count: the cluster has
its own), ``client_resources`` what each ClientApp actor takes from it.

A Ray head is started on this machine with a temporary folder of its own, a tiny federation
attaches to it, and every process the head started is stopped and reaped at the end (the
test's process is their subreaper, see scripts/flower_processes.py). Not ``ray stop``: it
stops every Ray process of the user on the machine, other runs' included.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def processes(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    return importlib.import_module("flower_processes")


def test_a_small_federation_runs_on_a_ray_head_and_leaves_no_process(processes):
    ray_cli = shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not on PATH")
    from fedcond.federated.config import FederateConfig
    from fedcond.simulations.runner import run_strategy

    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = processes.free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    cfg = FederateConfig(num_clients=2, method="random", ipc=1, server_epochs=1, storage_dtypes="float32",
                         random_reference=False, client_threads=1, server_threads=1)
    try:
        with processes.Supervisor() as sup:
            head = sup.run([ray_cli, "start", "--head", "--num-cpus", "1", "--port", str(port), "--temp-dir",
                            str(temp), "--include-dashboard", "false", "--disable-usage-stats"], env, timeout=240)
            assert head.returncode == 0, head.stdout[-3000:]
            resources = {"client_resources": {"num_cpus": 1, "num_gpus": 0},
                         "init_args": {"address": f"127.0.0.1:{port}", "log_to_driver": False}}
            record = run_strategy(cfg, resources)
            assert record["final_accuracy"] is not None
            assert len(record["rounds"][0]["clients"]) == 2  # both clients replied, one at a time on 1 CPU
            assert any(str(temp) in processes.command_line(p) for p in sup.descendants())  # the head we started
        assert sup.leftovers() == []
        assert not [p for p in processes.psutil.process_iter() if str(temp) in processes.command_line(p)]
    finally:
        shutil.rmtree(temp, ignore_errors=True)
