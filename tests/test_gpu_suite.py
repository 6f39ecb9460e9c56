"""benchmarks/gpu_suite.py: its CPU dry run (how CI checks the GPU command), resuming, and
the one-line error where no GPU is present."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmark_scripts import load_script  # tests/, a test-only helper


@pytest.fixture(scope="module")
def suite():
    yield load_script("gpu_suite")
    sys.modules.pop("gpu_suite", None)


def test_dry_run_runs_the_whole_plan_and_resumes(suite, tmp_path):
    out = tmp_path / "suite"
    # First call: no time for the paper-length cells beyond their first checkpoint.
    assert suite.main(["--dry-run", "--out", str(out), "--paper-budget", "0"]) == 0
    first = json.loads((out / "results.json").read_text())
    timing = [n for n in first["cells"] if n.startswith("time-")]
    assert len(timing) == 8 and all(first["cells"][n]["status"] == "done" for n in timing)
    for name in ("paper-dm-mnist-ipc10", "paper-dm-cifar10-ipc10"):
        row = first["cells"][name]
        assert row["status"] == "partial" and row["iterations_done"] == suite.DRY.paper_every
    row = first["cells"]["time-dm-mnist-ipc10"]
    assert row["fedcond"]["seconds_per_iteration"] > 0 and row["reference_loop"]["seconds_per_iteration"] > 0
    assert "target" not in row  # goals are H100 figures, never judged on a CPU
    assert set(first["skipped"]) == {n for n, _ in suite.commands(_stub(suite, out))}
    assert "DRY RUN" in (out / "results.md").read_text()

    # Second call: finished cells are kept, the paper-length cells continue from their checkpoints.
    assert suite.main(["--dry-run", "--out", str(out)]) == 0
    second = json.loads((out / "results.json").read_text())
    assert len(second["calls"]) == 2
    assert all(second["cells"][n] == first["cells"][n] for n in timing)
    for name in ("paper-dm-mnist-ipc10", "paper-dm-cifar10-ipc10"):
        row = second["cells"][name]
        assert row["status"] == "done" and row["iterations_done"] == suite.DRY.paper_iterations
        assert 0 <= row["accuracy"]["accuracy_mean"] <= 1 and row["random_real"]["runs"] == suite.DRY.eval_runs


def test_time_limit_skips_cells_and_says_so(suite, tmp_path):
    out = tmp_path / "suite"
    assert suite.main(["--dry-run", "--out", str(out), "--time-limit", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["cells"] == {}
    assert all(why.startswith(("time limit", "dry run")) for why in results["skipped"].values())
    assert "time-dm-mnist-ipc1" in results["skipped"]


def test_a_real_run_folder_is_not_mixed_with_a_dry_run(suite, tmp_path, capsys):
    out = tmp_path / "suite"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"format": suite.FORMAT, "dry_run": False, "cells": {}, "calls": []}))
    assert suite.main(["--dry-run", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "another --out" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_without_a_gpu_one_clear_line(suite, tmp_path, capsys):
    assert suite.main(["--out", str(tmp_path / "suite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--dry-run" in err[0]
    assert not (tmp_path / "suite").exists()


def _stub(suite, out):
    """A Suite whose only use is listing the command cells."""
    args = type("Args", (), {"data_dir": ".data"})()
    return suite.Suite(args, suite.DRY, torch.device("cpu"), out, {})


class _Parsed(Exception):
    """Raised where a benchmark's parser has accepted its command line: nothing runs."""


def test_every_command_cell_is_a_command_line_its_script_accepts(suite, tmp_path, monkeypatch):
    """The GPU commands run only on a lent GPU: a misspelt flag there would cost the loan.
    Each argv goes through its script's own parser here (a parse error is SystemExit 2)."""
    import argparse

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    names = []
    for name, argv in suite.commands(_stub(suite, tmp_path)):
        script = argv[1].rsplit("/", 1)[-1].removesuffix(".py")
        module = load_script(script)
        monkeypatch.setattr(sys, "argv", argv[1:])
        with pytest.raises(_Parsed):
            module.main(argv[2:]) if script != "continual_benchmark" else module.main()
        sys.modules.pop(script, None)
        names.append(name)
    assert names[0] == "cmd-fair-federated-cifar10-a0.5" and len(names) == 10
