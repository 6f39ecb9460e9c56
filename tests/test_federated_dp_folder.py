"""Issue 40: a `--dp-epsilon` output folder is what it claims. Everything in OUT is DP output
(no exact histograms, raw-data bytes or timings; no FedAvg, real-image references or upper
bound); the non-private parts run only when asked, apart in OUT/non_private/ with a note;
a sweep states the combined epsilon of its releases on the same data."""

from __future__ import annotations

import json
import re

import pytest

from fedcond.errors import FedcondError
from fedcond.federated.config import FederateConfig
from fedcond.federated.dp_folder import (
    NON_PRIVATE,
    NOTE_NAME,
    combined_privacy,
    composition_line,
    dp_plan,
    strip_timings,
)
from fedcond.simulations.flower_log import TIME_WITHHELD

DP = {"dataset": "digits", "num_clients": 2, "ipc": 1, "iterations": 2, "server_epochs": 1, "storage_dtypes": "float32",
      "dp_epsilon": 10.0, "method_options": '{"bank_size": 1, "min_class_size": 0}', "seed": 0}


def test_the_plan_leaves_out_what_is_not_dp_unless_asked():
    cfg = FederateConfig(**DP)
    private, strategies, reference, left = dp_plan(cfg, ["fedcond", "fedavg", "fedprox"], "full")
    assert strategies == ["fedcond"] and reference == "none"
    assert not private.random_reference and not private.herding_reference and private.dp_epsilon == 10.0
    assert any("fedavg" in x for x in left) and any("real images" in x for x in left)
    assert any("full reference" in x for x in left) and any("histograms" in x for x in left)
    asked = FederateConfig(**DP, dp_non_private=True)
    assert dp_plan(asked, ["fedcond", "fedavg"], "full") == (asked, ["fedcond", "fedavg"], "full", [])
    with pytest.raises(FedcondError, match="--dp-non-private"):
        dp_plan(cfg, ["fedavg"], "none")


def test_a_sweep_states_the_sum_of_its_releases():
    runs = [{"epsilon": 10.0, "delta": 1e-5}, {"epsilon": 1.0, "delta": 1e-5},
            {"epsilon": 10.0, "delta": 1e-5},  # a storage-dtype rerun: the same kept sets, no new release
            {"epsilon": None}]  # not DP: not part of the folder's DP output
    combined = combined_privacy(runs)
    assert combined["epsilon"] == 11.0 and combined["delta"] == pytest.approx(2e-5) and len(combined["releases"]) == 2
    assert "basic composition" in combined["composition"]
    line = composition_line(combined)
    assert "epsilon 11 = 1 + 10" in line and "basic composition" in line
    assert combined_privacy([{"epsilon": None}]) is None and composition_line(combined_privacy(runs[:1])) == ""


def test_a_dp_run_keeps_no_timings():
    run = {"wall_seconds": 3.0, "cpu_seconds": 2.0, "peak_memory": {"rss_bytes": 1},
           "rounds": [{"round": 1, "seconds": 1.5, "clients_seconds": 1.0, "accuracy": 0.5,
                       "clients": [{"node_id": 1, "distill_cpu_seconds": 2.0}]}]}
    strip_timings(run)
    assert run["wall_seconds"] is None and run["cpu_seconds"] is None and run["peak_memory"] is None
    assert run["rounds"][0]["seconds"] is None and run["rounds"][0]["clients_seconds"] is None
    assert run["rounds"][0]["accuracy"] == 0.5 and "withheld" in run["timings"]
    assert run["rounds"][0]["clients"][0]["distill_cpu_seconds"] is None


def _numbers_named(tree, names):
    """Every non-None value under a key in ``names``, anywhere in a JSON tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in names and value not in (None, {}):
                yield key, value
            yield from _numbers_named(value, names)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers_named(value, names)


def test_the_folder_holds_dp_output_only_and_the_rest_apart_when_asked(tmp_path):
    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config

    out = tmp_path / "dp"
    cfg = FederateConfig(**DP, dp_epsilons="1,10")
    result = run_experiment(cfg, ["fedcond", "fedavg"], out, backend_config(1.0, 0.0, 2), reference="full")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert not any(p.startswith(("label_histogram", NON_PRIVATE)) for p in written), written
    saved = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["fedcond"] and saved["reference"] == {}
    assert [r["name"] for r in saved["reference_runs"]] == ["fedcond-eps1"]  # no random-real, no herding
    for key in ("raw_data", "raw_data_upload_bytes", "peak_memory", "cpu_seconds"):
        assert key not in saved
    assert "wall_time_s" not in saved["record"]
    timings = ("seconds", "clients_seconds", "wall_seconds", "cpu_seconds", "wall_time_s", "peak_memory",
               "distill_seconds", "distill_cpu_seconds")
    assert list(_numbers_named(saved, timings)) == []
    # flower.log and the checkpoints too: no timestamps, durations or round seconds
    for path in out.rglob("*.json"):
        assert list(_numbers_named(json.loads(path.read_text()), timings)) == [], path
    log = (out / "flower.log").read_text()
    assert "[ROUND 1" in log and "finished in" in log and TIME_WITHHELD in log
    assert not re.search(r"\d{4}-\d\d-\d\d|\d\d:\d\d:\d\d|\d(\.\d+)?\s?s\b", log), log
    combined = saved["privacy"]["combined"]
    assert 10.5 < combined["epsilon"] <= 11.0 and len(combined["releases"]) == 2
    assert saved["privacy"]["non_private_part"] is None and any("fedavg" in x for x in saved["privacy"]["not_run"])
    md = (out / "results.md").read_text()
    assert "Combined privacy of this folder" in md and "Not run (not DP): fedavg" in md
    assert result["runs"][0]["epsilon"] <= 10.0

    # Asked for: the non-DP parts run, apart, under a note that says what they are.
    apart = tmp_path / "both"
    run_experiment(FederateConfig(**DP, dp_non_private=True, herding_reference=False), ["fedcond"], apart,
                   backend_config(1.0, 0.0, 2), reference="none")
    saved = json.loads((apart / "results.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["fedcond"] and saved["privacy"]["non_private_part"] == "non_private/"
    assert saved["reference_runs"] == []  # random real images: clients upload real ones, not DP
    other = json.loads((apart / NON_PRIVATE / "results.json").read_text())
    assert other["differentially_private"] is False and [r["name"] for r in other["runs"]] == ["random-real"]
    assert other["raw_data_upload_bytes"] > 0 and other["wall_time_s"] > 0
    assert "NOT differentially private" in (apart / NON_PRIVATE / NOTE_NAME).read_text()
    assert (apart / NON_PRIVATE / "label_histogram.json").is_file() and not (apart / "label_histogram.json").exists()
    # the non-DP run's checkpoints (with their timings) sit in the non-private part, not beside the DP runs'
    assert (apart / NON_PRIVATE / "checkpoints" / "random-real" / "record.json").is_file()
    assert "random-real" not in {p.name for p in (apart / "checkpoints").iterdir()}
    assert json.loads((apart / NON_PRIVATE / "checkpoints" / "random-real" / "record.json").read_text())["wall_seconds"]
