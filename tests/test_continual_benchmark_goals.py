"""benchmarks/continual_benchmark.py's goal table: fedcond's best distilled strategy against tuned
replay and against the best of every tuned baseline (replay, GDumb, iCaRL, DER)."""

from __future__ import annotations

import sys

from benchmark_scripts import BENCHMARKS, load_script  # tests/, a test-only helper


def _summary(acc: dict[tuple[str, int], float]) -> list[dict]:
    return [{"strategy": s, "mem_size": m, "final_average_accuracy_mean": a} for (s, m), a in acc.items()]


def test_goal_row_names_the_best_tuned_baseline_and_the_gain_over_it(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its neighbour config_options
    goal_lines = load_script("continual_benchmark").goal_lines
    sys.modules.pop("continual_benchmark", None)
    lines = goal_lines(_summary({
        ("joint", 0): 0.60, ("naive", 0): 0.12, ("replay", 200): 0.38, ("gdumb", 200): 0.36,
        ("icarl", 200): 0.49, ("der", 200): 0.45, ("distilled-replay", 200): 0.41, ("distilled-finetune", 200): 0.43,
    }))
    row = next(line for line in lines if line.startswith("| 200 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["distilled-finetune", "0.430"]
    assert cells[4] == "+5.0 pts"  # over replay
    assert cells[5:7] == ["icarl 0.490", "-6.0 pts"]  # the best baseline, not replay, is the bar
    assert cells[7] == f"{(0.43 - 0.38) / (0.60 - 0.38):.2f}"
    assert "Joint (upper bound): 0.600." in lines
    # a results file of fedcond's runs alone (no replay to judge against) has no goal table
    assert goal_lines(_summary({("distilled-finetune", 200): 0.5})) == []


def test_compare_table_shows_each_strategys_wall_time_and_peak_memory(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    markdown = load_script("continual_benchmark").markdown
    sys.modules.pop("continual_benchmark", None)
    runs = [
        {"strategy": "replay", "mem_size": 200, "seed": s, "wall_time_s": w, "peak_rss_mib": p}
        for s, w, p in ((0, 120.0, 1024.0), (1, 240.0, 3072.0))
    ] + [{"strategy": "naive", "mem_size": 0, "seed": 0, "wall_time_s": 60.0}]  # recorded before peaks were
    summary = [
        {"strategy": s, "mem_size": m, "seeds": list(range(n)), "final_average_accuracy_mean": a,
         "final_average_accuracy_std": 0.0, "forgetting_mean": 0.0, "forgetting_std": 0.0}
        for s, m, n, a in (("replay", 200, 2, 0.4), ("naive", 0, 1, 0.1))
    ]
    record = {"benchmark": "split-x", "device_name": "cpu", "versions": {"torch": "t", "avalanche-lib": "a"},
              "wall_time_s": 1.0}
    text = markdown({"runs": runs, "summary": summary, "note": "Made by two processes."}, "compare", "cmd", record)
    assert "\nMade by two processes.\n" in text  # --note, under the command
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith(("| replay", "| naive"))}
    assert rows["replay"][-2:] == ["3.0", "3.0"]  # mean wall minutes, the most memory of any seed in GiB
    assert rows["naive"][-2:] == ["1.0", ""]


def test_bounds_train_at_their_own_tuned_point_and_distilled_runs_at_replays(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    run_settings = load_script("continual_benchmark").run_settings
    sys.modules.pop("continual_benchmark", None)
    tuned = {"replay": {"200": {"lr": 0.01, "epochs": 1, "batch_size_mem": 64}},
             "icarl": {"200": {"lr": 0.03, "epochs": 5}}, "joint": {"0": {"lr": 0.03, "epochs": 5}}}
    strategies = ("naive", "joint", "replay", "icarl", "gdumb", "distilled-finetune")
    got = run_settings(tuned, strategies, 200, {"lr": 0.1, "epochs": 2})
    assert got["joint"] == {"lr": 0.03, "epochs": 5}  # the upper bound as strong as its grid made it
    assert got["naive"] == got["distilled-finetune"] == {"lr": 0.01, "epochs": 1}  # replay's, no memory batch
    assert got["replay"] == tuned["replay"]["200"] and got["icarl"] == tuned["icarl"]["200"]
    assert "gdumb" not in got  # untuned: its own defaults
    # a memory the grid never saw: the benchmark's defaults stand in for replay's point
    assert run_settings(tuned, ("naive", "distilled-replay"), 500, {"lr": 0.1, "epochs": 2})["naive"] == {
        "lr": 0.1, "epochs": 2}



def test_buffer_pictures_are_found_in_the_compare_folder_whatever_the_recorded_path(monkeypatch, tmp_path):
    """A run records its buffer picture relative to where it ran; a later invocation from elsewhere (an
    absolute --scratch, another worktree) finds it in the compare folder; a missing picture is left out."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    buffer_pictures = load_script("continual_benchmark").buffer_pictures
    sys.modules.pop("continual_benchmark", None)
    out = tmp_path / "scratch" / "compare"
    (out / "m200" / "buffers").mkdir(parents=True)
    (out / "m200" / "buffers" / "distilled-replay_m200_s0.png").write_bytes(b"png")
    runs = [
        {"strategy": "distilled-replay", "mem_size": 200, "seed": 0,
         "buffer_image": "runs/elsewhere/compare/m200/buffers/distilled-replay_m200_s0.png"},
        {"strategy": "distilled-replay", "mem_size": 200, "seed": 1, "buffer_image": "x.png"},  # seed 0 only
        {"strategy": "distilled-replay", "mem_size": 500, "seed": 0,
         "buffer_image": "runs/elsewhere/compare/m500/buffers/distilled-replay_m500_s0.png"},  # not there
        {"strategy": "replay", "mem_size": 200, "seed": 0},
    ]
    assert buffer_pictures(runs, out) == {200: out / "m200" / "buffers" / "distilled-replay_m200_s0.png"}


def test_tuned_points_come_from_a_tune_or_a_compare_results_file(monkeypatch, tmp_path):
    """A clean clone repeats a comparison with the points its committed compare file records."""
    import json

    import pytest

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    tuned_points = load_script("continual_benchmark").tuned_points
    sys.modules.pop("continual_benchmark", None)
    point = {"icarl": {"200": {"lr": 0.03, "epochs": 5}}}
    for i, data in enumerate([{"best": point, "rows": []}, {"tuned": point, "runs": []}]):
        (tmp_path / f"{i}.json").write_text(json.dumps(data))
        assert tuned_points(tmp_path / f"{i}.json") == point
    (tmp_path / "x.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(SystemExit, match="neither a tune step's results"):
        tuned_points(tmp_path / "x.json")
