"""benchmarks/time_to_accuracy.py: keeps each variant's set at its time budgets and the
paper-settings set at the authors' loop's iteration counts, evaluates them, and reads
finished work back instead of distilling again."""

from __future__ import annotations

import json
import sys

import pytest

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
