"""``fedcond federate``'s user errors: one ``error: ...`` line, exit code 2, no traceback.

Every case here fails while the settings are read, before any simulation starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcond.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def one_error_line(args: list[str]) -> str:
    result = runner.invoke(app, ["federate", *args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


def test_unknown_method_option_names_it_and_lists_the_known_ones(tmp_path):
    line = one_error_line(["--out", str(tmp_path), "-o", "nosuch=3"])
    assert "nosuch" in line and "known:" in line
    known = line.split("known:", 1)[1]
    assert "lr_images" in known and "batch_real" in known  # DM's options (the default method)
    assert not (tmp_path / "results.json").exists()


def test_method_option_is_checked_against_the_chosen_method(tmp_path):
    line = one_error_line(["--out", str(tmp_path), "--method", "random", "-o", "lr_images=0.5"])
    assert "lr_images" in line and "random" in line


@pytest.mark.parametrize("args, problem", [
    (["--strategies", "fedcond,nope"], "unknown strategy nope"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["-o", "novalue"], "key=value"),
    (["--reference", "half"], "--reference"),
    (["--storage-dtypes", "float32,int4"], "unknown storage dtype int4"),
])
def test_bad_flags_are_one_line(tmp_path, args, problem):
    assert problem in one_error_line(["--out", str(tmp_path), *args])


def test_bad_config_file_is_one_line(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text("[federate]\nrounds = 2\n")
    assert "top-level kebab-case keys" in one_error_line(["--out", str(tmp_path), "--config", str(path)])
    path.write_text("nosuch = 2\n")
    line = one_error_line(["--out", str(tmp_path), "--config", str(path)])
    assert "nosuch" in line and "known:" in line and "num-clients" in line
