"""Every command checks its paths and option combinations before any work: a user error is
one ``error: ...`` line and exit code 2, and the work (loading data, training, simulating)
never starts — each test replaces the work with a function that fails the test if called.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedcond.cli import app
from fedcond.synthetic import SyntheticSet

runner = CliRunner()

WORK = {  # what each command would start with once its checks pass
    "distill": "fedcond.data.load_dataset",
    "experts": "fedcond.data.load_dataset",
    "evaluate": "fedcond.data.load_dataset",
    "relabel": "fedcond.data.load_dataset",
    "audit": "fedcond.data.load_dataset",
    "info": "fedcond.data.load_dataset",  # info does no work; nothing may load data either
    "federate": "fedcond.simulations.experiment.run_experiment",
    "continual": "fedcond.continual.benchmarks.make_benchmark",
}


@pytest.fixture()
def no_work(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("work started before the checks")

    def forbid(command: str) -> None:
        monkeypatch.setattr(WORK[command], started)

    return forbid


@pytest.fixture(scope="module")
def set_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("set") / "synthetic.safetensors"
    sset = SyntheticSet(images=torch.zeros(10, 1, 8, 8), labels=torch.arange(10), classes=tuple("0123456789"),
                        mean=(0.0,), std=(1.0,), method="random", ipc=1, dataset="digits")
    sset.save(path)
    return path


def one_error_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def _args(command: str, set_path, out) -> list[str]:
    """The command with an output at ``out`` (a folder, or a file inside ``out``)."""
    return {
        "distill": ["distill", "--dataset", "digits", "--method", "random", "--ipc", "1", "--out", str(out)],
        "experts": ["experts", "--dataset", "digits", "--out", str(out), "--num-experts", "1", "--epochs", "1"],
        "evaluate": ["evaluate", str(set_path), "--dataset", "digits", "--json", str(out / "r.json")],
        "relabel": ["relabel", str(set_path), "--dataset", "digits", "--out", str(out / "relabelled.safetensors")],
        "audit": ["audit", str(set_path), "--dataset", "digits", "--json", str(out / "audit.json")],
        "federate": ["federate", "--dataset", "digits", "--out", str(out)],
        "continual": ["continual", "--out", str(out)],
    }[command]


WRITERS = ["distill", "experts", "evaluate", "relabel", "audit", "federate", "continual"]


@pytest.mark.parametrize("command", WRITERS)
def test_unwritable_output_is_one_line_before_any_work(command, set_path, tmp_path, no_work):
    no_work(command)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_error_line(_args(command, set_path, blocker / "out"))
    assert "a-file is a file, not a folder" in line
    assert not (blocker.parent / "out").exists()


@pytest.mark.parametrize("command", ["distill", "experts", "evaluate", "relabel", "audit", "federate", "continual"])
def test_missing_data_folder_is_one_line_before_any_work(command, set_path, tmp_path, no_work):
    no_work(command)
    missing = tmp_path / "no-mirror"
    line = one_error_line(_args(command, set_path, tmp_path / "out") + ["--data-dir", str(missing)])
    assert f"--data-dir {missing}: no such folder" in line
    assert not (tmp_path / "out").exists()  # the checks create nothing


def test_info_missing_set_is_one_line(tmp_path, no_work):
    no_work("info")
    assert "no such synthetic set file" in one_error_line(["info", str(tmp_path / "missing.safetensors")])


@pytest.mark.parametrize("command, extra, problem", [
    ("distill", ["--dtype", "int4"], "--dtype must be one of"),
    ("experts", ["--epochs", "0"], "must be >= 1"),
    ("evaluate", ["--full"], "either a synthetic set PATH or --full"),
    ("relabel", ["--teacher", "t.safetensors", "--teacher-model", "mlp"], "not both"),
    ("audit", ["--near-copy-quantile", "2"], "quantile must be in (0, 1)"),
    ("federate", ["--strategies", "fedcond", "--rounds", "3"], "--rounds 3 has no effect"),
    ("continual", ["--strategies", "distilled-replay", "-o", "nope=1"], "unknown option(s) for method dm: nope"),
])
def test_bad_option_combinations_are_one_line_before_any_work(command, extra, problem, set_path, tmp_path, no_work):
    no_work(command)
    assert problem in one_error_line(_args(command, set_path, tmp_path / "out") + extra)


def test_continual_console_has_no_third_party_warning():
    """Avalanche's import pulls in qpsolvers, which warns when no QP solver is installed;
    fedcond's continual package filters exactly that message (nothing here solves a QP)."""
    proc = subprocess.run([sys.executable, "-W", "default::UserWarning", "-c", "import fedcond.continual"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr


UNCREATABLE = [
    pytest.param("/proc/fedcond-x", "cannot create /proc/fedcond-x", id="proc"),  # root may not create it either
]


@pytest.mark.parametrize("where, problem", UNCREATABLE)
@pytest.mark.parametrize("command", WRITERS)
def test_uncreatable_output_is_one_line_before_any_work(command, where, problem, set_path, tmp_path, no_work):
    """Permission bits say nothing for root (and /proc or a read-only mount refuse anyway):
    the check creates and writes there, as the real write would, before any work."""
    if not os.path.isdir("/proc"):
        pytest.skip("no /proc here")
    no_work(command)
    line = one_error_line(_args(command, set_path, Path(where)))
    assert problem in line and "choose another" in line, line


@pytest.mark.parametrize("command", WRITERS)
def test_the_probe_leaves_nothing_behind(command, set_path, tmp_path, no_work):
    """A command stopped by a later check after its output folders were probed: no folder,
    no probe file is left (the probe removes what it created)."""
    no_work(command)
    out = tmp_path / "new" / "out"
    one_error_line(_args(command, set_path, out) + ["--data-dir", str(tmp_path / "no-mirror")])
    assert not (tmp_path / "new").exists()


def test_probe_writes_where_permission_bits_would_pass(tmp_path, monkeypatch):
    """The probe's verdict comes from a real write: a folder whose writes fail is refused
    even where os.access says yes (root), and a good folder keeps no probe file."""
    from fedcond.commands import common
    from fedcond.errors import FedcondError

    good = tmp_path / "good"
    assert common.writable_folder(good) == good and not good.exists()
    good.mkdir()
    common.writable_folder(good)
    assert list(good.iterdir()) == []

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(common.tempfile, "mkstemp", refuse)
    with pytest.raises(FedcondError, match=r"cannot write in .*good \(Read-only file system\)"):
        common.writable_folder(good)


def test_federate_unknown_dataset_prints_no_header_and_creates_nothing(tmp_path, no_work):
    no_work("federate")
    out = tmp_path / "D"
    result = runner.invoke(app, ["federate", "--dataset", "nosuchdata", "--out", str(out)])
    assert result.exit_code == 2 and not out.exists(), result.output
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.strip().splitlines()
                                                  if line.startswith("error: unknown dataset 'nosuchdata'")]
