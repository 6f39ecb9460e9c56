"""A local Flower simulation with failing clients completes and writes the promised files.

FedCond runs here in iterative mode (model broadcast, sets refined against it); one-shot
mode is what the loopback deployment test runs. Its references run beside it: FedCond
again with uint8 uploads, random real images at the same bytes, the raw-data bytes and
a (here briefly trained) centralised upper bound.
"""

from __future__ import annotations

import json

import pytest

from fedcond.federated.config import FederateConfig


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config

    out = tmp_path_factory.mktemp("fl")
    cfg = FederateConfig(dataset="digits", num_clients=4, partition="dirichlet", alpha=0.5, rounds=2, method="dm",
                         ipc=2, iterations=3, server_epochs=5, local_epochs=1, fail_fraction=0.4, seed=1,
                         storage_dtypes="float32,uint8", central_max_epochs=3)
    result = run_experiment(cfg, ["fedcond-iterative", "fedavg"], out, backend_config(1.0, 0.0, 2), reference="full")
    return out, result


def test_failing_clients_are_reported_and_the_run_completes(experiment):
    out, result = experiment
    runs = {r["strategy"]: r for r in result["runs"]}
    assert set(runs) == {"fedcond-iterative", "fedavg"}
    assert len(runs["fedcond-iterative"]["rounds"]) == 2 and len(runs["fedavg"]["rounds"]) == 2
    # seed 1, fail fraction 0.4: some client-rounds fail (the client-side draw is seeded)
    lost = [c for r in result["runs"] for rnd in r["rounds"] for c in rnd["lost"]]
    assert lost and all(c["status"] == "failed" and "injected failure" in c["reason"] for c in lost)
    for run in result["runs"]:
        for rnd in run["rounds"]:
            assert rnd["clients_sampled"] == 4
            ok = [c for c in rnd["clients"] if c["status"] == "ok"]
            assert len(ok) + rnd["clients_lost"] == 4
            assert rnd["accuracy"] is not None


def test_clients_run_at_the_drivers_priority(experiment):
    import os

    # Ray niceness 15 for its workers (every ClientApp) unless told: the runner tells it 0
    assert os.environ.get("RAY_worker_niceness") == "0"


def test_results_json_schema(experiment):
    out, _ = experiment
    data = json.loads((out / "results.json").read_text())
    assert isinstance(data["runs"], list)
    for run in data["runs"]:
        assert isinstance(run["strategy"], str)
        previous_up = previous_down = 0
        for i, rnd in enumerate(run["rounds"], start=1):
            assert rnd["round"] == i
            assert 0.0 <= rnd["accuracy"] <= 1.0
            # cumulative: never decreasing, and equal to the per-client sums so far
            assert rnd["upload_bytes"] >= previous_up and rnd["download_bytes"] >= previous_down
            assert rnd["upload_bytes"] - previous_up == sum(c["upload_bytes"] for c in rnd["clients"])
            assert rnd["download_bytes"] - previous_down == sum(c["download_bytes"] for c in rnd["clients"])
            previous_up, previous_down = rnd["upload_bytes"], rnd["download_bytes"]
    fedcond = next(r for r in data["runs"] if r["strategy"] == "fedcond-iterative")
    fedavg = next(r for r in data["runs"] if r["strategy"] == "fedavg")
    assert fedcond["rounds"][-1]["upload_bytes"] < fedavg["rounds"][-1]["upload_bytes"] / 10
    assert fedcond["pool_provenance"] and all("partition_id" in p for p in fedcond["pool_provenance"])
    # iterative mode broadcasts the global model: each sampled client downloads about as
    # much as a FedAvg client does, while uploading only its small set
    for mine, theirs in zip(fedcond["rounds"], fedavg["rounds"]):
        ok = [c for c in mine["clients"] if c["status"] == "ok"]
        assert all(c["download_bytes"] > 0.9 * theirs["clients"][0]["download_bytes"] for c in ok)
    assert any(p["method"] == "feddm" for p in fedcond["pool_provenance"])
    for name in ("accuracy_vs_bytes.png", "results.md", "label_histogram.png", "label_histogram.json"):
        assert (out / name).stat().st_size > 0
    hist = json.loads((out / "label_histogram.json").read_text())["histogram"]
    # the clients hold the training images but the validation split, held out before partitioning
    assert len(hist) == 4 and sum(map(sum, hist)) + data["validation"]["images"] == 1347
    assert data["validation"]["images"] == 136 and data["validation"]["fraction"] == 0.1


def test_flower_log_is_a_file_without_the_deprecation(experiment):
    out, _ = experiment
    text = (out / "flower.log").read_text()
    assert "Starting FedAvg strategy" in text and "[ROUND 2/2]" in text  # Flower's INFO lines
    assert "injected failure" in text  # the failing clients' errors are kept there
    assert "run_simulation` function is deprecated" not in text


def test_results_json_holds_the_references(experiment):
    out, _ = experiment
    data = json.loads((out / "results.json").read_text())
    assert [r["strategy"] for r in data["runs"]] == ["fedcond-iterative", "fedavg"]  # the contract is unchanged
    refs = {r["name"]: r for r in data["reference_runs"]}
    assert set(refs) == {"fedcond-iterative-uint8", "random-real", "herding"}
    assert refs["herding"]["method"] == "herding" and refs["herding"]["reference"] == "herding"
    mine = next(r for r in data["runs"] if r["strategy"] == "fedcond-iterative")
    uint8, random_real = refs["fedcond-iterative-uint8"], refs["random-real"]
    assert uint8["storage_dtype"] == "uint8" and uint8["reference"] == "storage-dtype" and len(uint8["rounds"]) == 2
    assert random_real["method"] == "random" and random_real["ipc"] == 2 and len(random_real["rounds"]) == 1
    assert all(0 <= r["final_accuracy"] <= 1 for r in refs.values())
    # uint8 pixels take a quarter of float32's bytes (labels and headers aside)
    assert uint8["upload_bytes"] < 0.6 * mine["upload_bytes"]
    raw = data["raw_data_upload_bytes"]
    assert raw == data["raw_data"]["upload_bytes"] and raw > (1347 - 136) * 64  # the validation split held out
    assert 0 < data["reference"]["full_data_accuracy"] <= 1 and data["reference"]["full_data_epochs"] <= 3
    table = (out / "results.md").read_text()
    assert "random-real" in table and "Raw data" in table and "upper bound" in table
