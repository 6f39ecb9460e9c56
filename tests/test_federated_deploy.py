"""The app runs on a real SuperLink + SuperNodes on loopback (insecure local mode)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "deploy_local.sh"


@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="flower-superlink not on PATH")
def test_loopback_deployment_runs_the_app_and_cleans_up():
    run_config = "strategy='fedcond' method='random' ipc=5 server-epochs=50"
    proc = subprocess.run(["bash", str(SCRIPT), "2", run_config], capture_output=True, text=True, timeout=280,
                          env={**__import__("os").environ, "DEPLOY_TIMEOUT": "240"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    match = re.search(r"fedcond: final accuracy ([0-9.]+), upload (\d+) bytes", output)
    assert match, output[-3000:]
    assert float(match.group(1)) > 0.3 and int(match.group(2)) > 0  # two real clients uploaded sets
    port = int(re.search(r"SuperLink on 127\.0\.0\.1:(\d+)", output).group(1))
    with socket.socket() as s:  # the SuperLink the script started is gone
        assert s.connect_ex(("127.0.0.1", port)) != 0
