"""benchmarks/time_to_accuracy.py: keeps each variant's set at its time budgets and the
paper-settings set at the authors' loop's iteration counts, evaluates them, and reads
finished work back instead of distilling again."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmark_scripts import load_script  # tests/, a test-only helper


@pytest.fixture(scope="module")
def tta():
    yield load_script("time_to_accuracy")
    sys.modules.pop("time_to_accuracy", None)


def test_variants_parse_into_dm_options(tta):
    assert tta.parse_variants("default; batch_real=64,lr_images=2.5;init=noise") == {
        "default": {}, "batch_real=64,lr_images=2.5": {"batch_real": 64, "lr_images": 2.5},
        "init=noise": {"init": "noise"},
    }
    with pytest.raises(SystemExit, match="key=value"):
        tta.parse_variants("batch_real")


def test_budgets_kept_evaluated_and_read_back(tta, tmp_path, monkeypatch):
    argv = ["--dataset", "digits", "--ipc", "1", "--variants", "default;batch_real=16", "--budgets", "1,2",
            "--minute", "0.5", "--runs", "1", "--eval-epochs", "2", "--reference-iterations", "1",
            "--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "sets")]
    tta.main(argv)
    report = json.loads((tmp_path / "out" / "time_to_accuracy_digits_ipc1.json").read_text())
    default = report["variants"]["default"]["kept"]
    assert set(default) == {"fedcond_1min", "fedcond_2min", "reference_1min", "reference_2min"}
    assert set(report["variants"]["batch_real=16"]["kept"]) == {"fedcond_1min", "fedcond_2min"}
    ref_s = report["reference_loop"]["seconds_per_iteration"]
    for budget in (1, 2):
        fed = default[f"fedcond_{budget}min"]
        ref = default[f"reference_{budget}min"]
        assert fed["seconds"] >= budget * 0.5  # kept once its budget had passed, not before
        assert ref["iteration"] == max(1, int(budget * 0.5 / ref_s))  # what the authors' loop runs in it
        assert 0 <= fed["accuracy"]["mean"] <= 1 and 0 <= ref["accuracy"]["mean"] <= 1
    assert default["fedcond_2min"]["iteration"] >= default["fedcond_1min"]["iteration"]
    md = (tmp_path / "out" / "time_to_accuracy_digits_ipc1.md").read_text()
    assert "| authors' loop (paper settings) |" in md and "| fedcond DM, batch_real=16 |" in md
    assert "![accuracy against minutes of distillation](time_to_accuracy_digits_ipc1.png)" in md
    assert (tmp_path / "out" / "time_to_accuracy_digits_ipc1.png").stat().st_size > 0

    # a second run reads everything back: nothing is distilled or evaluated again
    def fail(*args, **kwargs):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr(tta, "make_distiller", fail)
    monkeypatch.setattr(tta, "evaluate_synthetic", fail)
    monkeypatch.setattr(tta, "evaluate_random", fail)
    monkeypatch.setattr(tta, "reference_style_dm_seconds", fail)
    tta.main(argv)
    again = json.loads((tmp_path / "out" / "time_to_accuracy_digits_ipc1.json").read_text())
    assert again["variants"] == report["variants"]


def test_cpu_clock_resumes_from_the_clock_a_killed_run_reached(tta, tmp_path):
    import torch

    from fedcond.data import load_dataset
    from fedcond.distill.base import make_distiller

    data = load_dataset("digits")
    distiller, config = make_distiller("dm", {"ipc": 1, "iterations": 3, "log_every": 1})
    sset = distiller.distill(data, config, torch.Generator().manual_seed(0))
    # a first process reached 100 s of CPU at its checkpoint of iteration 25 and kept nothing yet
    (tmp_path / "progress.json").write_text(json.dumps({"kept": {}, "elapsed_at": {"25": 100.0, "30": 120.0}}))
    keep = tta.KeepAtBudgets({"fedcond_1min": 60.0, "fedcond_3min": 180.0}, {}, tmp_path, clock="cpu", every=25)
    keep.on_snapshot(26, sset)  # resumed after the checkpoint at 25: counts on from 100 s, not from 120 s or 0
    assert set(keep.kept) == {"fedcond_1min"}
    assert 100.0 <= keep.kept["fedcond_1min"]["seconds"] < 120.0
    assert (tmp_path / "fedcond_1min.safetensors").exists()
    saved = json.loads((tmp_path / "progress.json").read_text())
    assert saved["kept"] == keep.kept and "26" in saved["elapsed_at"]
    # a third process finds the kept set and does not keep it again
    again = tta.KeepAtBudgets({"fedcond_1min": 60.0, "fedcond_3min": 180.0}, {}, tmp_path, clock="cpu", every=25)
    assert again.seconds == {"fedcond_3min": 180.0} and again.kept == keep.kept


def test_cpu_clock_run_records_its_clock_threads_and_protocol(tta, tmp_path):
    argv = ["--dataset", "digits", "--ipc", "1", "--variants", "batch_real=16", "--budgets", "1",
            "--minute", "0.3", "--runs", "1", "--eval-epochs", "2", "--eval-dsa", "--reference-iterations", "1",
            "--clock", "cpu", "--threads", "1", "--tag", "_cpu", "--checkpoint-every", "5",
            "--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "sets")]
    import torch

    threads = torch.get_num_threads()
    try:
        tta.main(argv)
    finally:
        torch.set_num_threads(threads)  # --threads sets the process's torch threads; later tests keep theirs
    report = json.loads((tmp_path / "out" / "time_to_accuracy_digits_ipc1_cpu.json").read_text())
    assert report["clock"] == "cpu" and report["threads"] == 1 and report["eval_dsa"] is True
    kept = report["variants"]["batch_real=16"]["kept"]["fedcond_1min"]
    assert kept["seconds"] >= 0.3 and 0 <= kept["accuracy"]["mean"] <= 1
    assert (tmp_path / "sets" / "digits" / "ipc1" / "batch_real-16" / "checkpoints").is_dir()
    md = (tmp_path / "out" / "time_to_accuracy_digits_ipc1_cpu.md").read_text()
    assert "of this process's CPU time (1 thread)" in md and "DSA augmentation" in md


def test_a_larger_budget_goes_on_and_keeps_earlier_evaluations(tta, tmp_path, monkeypatch):
    def run(budgets: str, runs: str) -> dict:
        tta.main(["--dataset", "digits", "--ipc", "1", "--variants", "default", "--budgets", budgets,
                  "--minute", "0.5", "--runs", runs, "--eval-epochs", "2", "--reference-iterations", "1",
                  "--checkpoint-every", "1", "--no-random-real",
                  "--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "sets")])
        report = json.loads((tmp_path / "out" / "time_to_accuracy_digits_ipc1.json").read_text())
        return report["variants"]["default"]["kept"]

    first = run("1", "1")
    checkpoint = tmp_path / "sets" / "digits" / "ipc1" / "default" / "checkpoints" / "checkpoint.pt"
    checkpointed = int(torch.load(checkpoint, weights_only=True)["iteration"])
    assert checkpointed >= 1
    evaluated, seen = [], []
    real = tta.evaluate_synthetic

    def counting(sset, *args, **kwargs):
        evaluated.append(sset.num_images)
        return real(sset, *args, **kwargs)

    monkeypatch.setattr(tta, "evaluate_synthetic", counting)
    snapshot = tta.KeepAtBudgets.on_snapshot
    monkeypatch.setattr(tta.KeepAtBudgets, "on_snapshot",
                        lambda self, i, s: seen.append(i) or snapshot(self, i, s))
    kept = run("1,2", "1")  # distils on to 2 minutes
    assert seen[0] == checkpointed + 1  # went on from the first run's checkpoint, not from the start
    assert set(kept) == {"fedcond_1min", "fedcond_2min", "reference_1min", "reference_2min"}
    assert kept["fedcond_1min"] == first["fedcond_1min"] and kept["reference_1min"] == first["reference_1min"]
    assert len(evaluated) == 2  # only the two new sets
    assert kept["fedcond_2min"]["seconds"] >= 1.0
    assert kept["fedcond_2min"]["iteration"] >= first["fedcond_1min"]["iteration"]  # holds once it goes on

    evaluated.clear()
    seeds = []
    monkeypatch.setattr(tta, "evaluate_synthetic", lambda *a, runs, seed, **k: seeds.append((runs, seed)) or real(
        *a, runs=runs, seed=seed, **k))
    again = run("1,2", "2")  # each set gets its second run alone: run r trains with seed + r
    assert seeds == [(1, 1)] * 4
    for key, k in again.items():
        assert k["accuracy"]["accuracies"][0] == kept[key]["accuracy"]["accuracies"][0]
        assert len(k["accuracy"]["accuracies"]) == 2
