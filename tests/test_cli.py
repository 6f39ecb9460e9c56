"""The command line through typer's test runner, as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from fedcond.cli import app
from fedcond.synthetic import SyntheticSet

runner = CliRunner()


@pytest.fixture(scope="module")
def herding_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("h")
    result = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "herding", "--ipc", "2",
                                 "--out", str(out), "--seed", "3", "--device", "cpu", "-o", "feature_epochs=1"])
    assert result.exit_code == 0, result.output
    return out


def test_every_listed_command_is_there():
    """A command named in fedcond.commands.COMMANDS is a command of the app (none listed but absent)."""
    import typer

    from fedcond.commands import COMMANDS

    names = set(typer.main.get_command(app).commands)
    assert names == set(COMMANDS)


def test_distill_writes_set_record_and_grid(herding_run):
    sset = SyntheticSet.load(herding_run / "synthetic.safetensors")
    assert sset.method == "herding" and sset.class_counts() == [2] * 10 and sset.seed == 3
    assert sset.config["feature_epochs"] == 1
    record = json.loads((herding_run / "run.json").read_text())
    for key in ("config", "seed", "versions", "device", "wall_time_s", "peak_memory_bytes", "nbytes"):
        assert key in record
    assert record["nbytes"] == (herding_run / "synthetic.safetensors").stat().st_size
    assert record["versions"]["torch"] == torch.__version__.split("+")[0]
    png = (herding_run / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_evaluate_json_and_info(herding_run, tmp_path):
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["evaluate", str(herding_run / "synthetic.safetensors"), "--dataset", "digits",
                                 "--runs", "2", "--epochs", "50", "--random-ipc", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["runs"] == 2 and 0.3 < data["accuracy_mean"] <= 1 and data["accuracy_std"] >= 0
    assert data["baselines"][0]["kind"] == "random"
    info = runner.invoke(app, ["info", str(herding_run / "synthetic.safetensors"), "--json"])
    assert info.exit_code == 0
    assert json.loads(info.stdout)["nbytes"] == (herding_run / "synthetic.safetensors").stat().st_size


def _corrupt_files(src, tmp_path):
    good = SyntheticSet.load(src)
    data = src.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    nan = SyntheticSet.load(src)
    nan.images[0, 0, 0, 0] = float("nan")
    yield "truncated.safetensors", "truncated"
    from safetensors.torch import save as st_save  # write broken files directly, as a buggy peer would

    meta = {"fedcond": json.dumps(good._metadata(), sort_keys=True)}
    (tmp_path / "nan.safetensors").write_bytes(st_save({"images": nan.images, "labels": good.labels}, metadata=meta))
    yield "nan.safetensors", "NaN"
    (tmp_path / "shape.safetensors").write_bytes(
        st_save({"images": good.images[:, :, :4].contiguous(), "labels": good.labels}, metadata=meta)
    )
    yield "shape.safetensors", "wrong image shape"
    bad_labels = good.labels.clone()
    bad_labels[0] = 42
    (tmp_path / "label.safetensors").write_bytes(st_save({"images": good.images, "labels": bad_labels}, metadata=meta))
    yield "label.safetensors", "label out of range"


@pytest.mark.parametrize("command", ["info", "evaluate"])
def test_malformed_files_exit_nonzero_with_one_line(herding_run, tmp_path, command):
    for name, problem in _corrupt_files(herding_run / "synthetic.safetensors", tmp_path):
        args = [command, str(tmp_path / name)] + (["--dataset", "digits"] if command == "evaluate" else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (name, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and problem in lines[0], result.stderr


def test_user_errors_are_one_line(tmp_path):
    for args, message in [
        (["distill", "--dataset", "nope", "--method", "random", "--out", str(tmp_path)], "unknown dataset"),
        (["distill", "--dataset", "digits", "--method", "nope", "--out", str(tmp_path)], "unknown method"),
        (
            ["distill", "--dataset", "digits", "--method", "random", "--iterations", "5", "--out", str(tmp_path)],
            "does not iterate",
        ),
        (["evaluate", "--dataset", "digits"], "nothing to evaluate"),
        (["info", str(tmp_path / "missing.safetensors")], "no such synthetic set file"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr


def test_entry_point_help_and_bad_flag():
    no_args = subprocess.run([sys.executable, "-m", "fedcond.cli"], capture_output=True, text=True)
    assert no_args.returncode == 0 and "distill" in no_args.stdout and "evaluate" in no_args.stdout
    bad = subprocess.run([sys.executable, "-m", "fedcond.cli", "distill", "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "--bogus" in bad.stderr


def test_evaluate_models_prints_one_table_and_json_per_architecture(herding_run, tmp_path):
    out = tmp_path / "arch.json"
    path = str(herding_run / "synthetic.safetensors")
    result = runner.invoke(app, ["evaluate", path, "--dataset", "digits", "--runs", "2", "--epochs", "10",
                                 "--models", "convnet,mlp,lenet", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in ("architecture", "convnet", "mlp", "lenet"))
    data = json.loads(out.read_text())
    assert [a["model"] for a in data["architectures"]] == ["convnet", "mlp", "lenet"]
    assert all(len(a["accuracies"]) == 2 and 0 <= a["accuracy_mean"] <= 1 for a in data["architectures"])
    first = data["architectures"][0]  # the usual top-level fields are the first network's
    assert data["model"] == "convnet" and data["runs"] == 2
    assert (data["accuracy_mean"], data["accuracy_std"]) == (first["accuracy_mean"], first["accuracy_std"])

    for args, message in [
        (["--model", "mlp", "--models", "convnet,mlp"], "not both"),
        (["--models", "convnet,nope"], "unknown model 'nope'"),
        (["--models", "convnet,,mlp"], "empty model name"),
        (["--models", "convnet", "--random-ipc", "2"], "drop --full/--random-ipc"),
        (["--kd-temperature", "0"], "kd temperature must be > 0"),
    ]:
        bad = runner.invoke(app, ["evaluate", path, "--dataset", "digits"] + args)
        assert bad.exit_code == 2, (args, bad.output)
        assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and message in bad.stderr, (args, bad.stderr)
