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
