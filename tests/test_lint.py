"""The code passes ruff with the project's configuration (pyproject.toml, [tool.ruff]).

ruff comes with the dev extra, so the README's set-up commands (what CI runs) check it here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                            capture_output=True, text=True)
    assert "No module named ruff" not in result.stderr, "ruff is missing: pip install -e '.[dev]'"
    assert result.returncode == 0, result.stdout + result.stderr
