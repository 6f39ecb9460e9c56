"""DP commands print the (epsilon, delta) they achieved, not only run.json."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fedcond.cli import app
from fedcond.commands.federate import achieved_privacy


def test_distill_dp_dm_prints_the_epsilon_and_delta_it_achieved(tmp_path):
    out = tmp_path / "dp"
    result = CliRunner().invoke(app, ["distill", "--dataset", "digits", "--method", "dp-dm", "--epsilon", "5",
                                      "--ipc", "1", "-n", "3", "--out", str(out), "--threads", "1"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    line = next(x for x in result.stdout.splitlines() if x.startswith("privacy: "))
    assert f"({record['epsilon']:.4g}, {record['privacy']['delta']:.3g})-DP" in line, line
    assert "target epsilon 5" in line and "add or remove one training example" in line


def test_a_federated_run_states_its_largest_client_epsilon():
    pool = [{"epsilon": 4.2, "delta": 1e-5}, {"epsilon": 4.9, "delta": 1e-5}]
    assert achieved_privacy({"pool_provenance": pool}) == (", DP (epsilon, delta) = (4.9, 1e-05) achieved, "
                                                           "the largest client's")
    assert achieved_privacy({"pool_provenance": [*pool, {"epsilon": None, "delta": None}]}) == ""  # one without DP
    assert achieved_privacy({"final_accuracy": 0.5}) == ""  # FedAvg: no pool
