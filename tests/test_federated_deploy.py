"""The app deployed as docs/federated.md ("Across machines") says, on 127.0.0.1: a SuperLink
with TLS and SuperNode authentication, certificates and keys made here, SuperNodes
registered with ``flwr supernode register``, ``flwr run`` — and no process left behind.

Flower is a dependency of fedcond: a missing executable fails these tests, it does not skip them.
"""

from __future__ import annotations

import importlib
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOWER_EXECUTABLES = ("flower-superlink", "flower-supernode", "flwr")


@pytest.fixture()
def scripts(monkeypatch):
    """scripts/deploy_local.py and scripts/flower_processes.py, imported as the script imports them."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    return importlib.import_module("deploy_local"), importlib.import_module("flower_processes")


def require_flower() -> None:
    missing = [exe for exe in FLOWER_EXECUTABLES if shutil.which(exe) is None]
    assert not missing, (f"{', '.join(missing)} not on PATH: Flower is a dependency of fedcond "
                         f"(pip install -e .); run the tests in the environment it is installed in")


def tls_handshake(port: int, ca: Path) -> str:
    """The TLS version the SuperLink's port negotiates, verifying its certificate with ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version()


def test_deployment_with_tls_and_supernode_authentication(scripts, tmp_path):
    require_flower()
    deploy, processes = scripts
    work = tmp_path
    env = deploy.deployment_env(work)
    tls = deploy.make_certificates(work / "certs", hosts=("127.0.0.1", "localhost"))
    keys = [deploy.make_node_key(work / f"node-{i}") for i in range(2)]
    intruder = deploy.make_node_key(work / "intruder")  # a key pair that is never registered
    port = processes.free_port()
    with processes.Supervisor() as sup:
        address = deploy.start_superlink(sup, tls, port, env, work / "superlink.log")
        assert tls_handshake(port, tls["ca"]).startswith("TLS")  # the SuperLink speaks TLS, with our certificate
        deploy.flower_config(Path(env["FLWR_HOME"]), address, tls["ca"])
        for key in keys:
            deploy.register(sup, key.with_suffix(".pub"), env)
        # The unregistered SuperNode starts first: admitted, it would make the federation 3
        # SuperNodes for num-clients = 2, and the ServerApp would refuse to run.
        deploy.start_supernode(sup, address, tls["ca"], intruder, 0, 2, env, work / "intruder.log")
        for i, key in enumerate(keys):
            deploy.start_supernode(sup, address, tls["ca"], key, i, 2, env, work / f"supernode-{i}.log")
        done = deploy.run_app(sup, 2, "strategy='fedcond' method='random' ipc=5 server-epochs=50", env, timeout=280)
        superlink_log = (work / "superlink.log").read_text(errors="replace")
    assert sup.leftovers() == []  # every process stopped and reaped, none defunct
    assert done.returncode == 0, done.stdout[-3000:]
    assert "fedcond: 2 SuperNodes, one per partition (num-clients = 2)" in done.stdout, done.stdout[-3000:]
    assert "fedcond: final accuracy" in done.stdout and "error:" not in done.stdout
    accuracy = float(done.stdout.split("fedcond: final accuracy ")[1].split(",")[0])
    assert accuracy > 0.3  # two real clients uploaded their sets
    assert superlink_log.count("[Fleet.ActivateNode] Activated") == 2, superlink_log[-3000:]
    assert "Failed to activate SuperNode" in (work / "intruder.log").read_text(errors="replace")
    with socket.socket() as s:  # the SuperLink is gone
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_supervisor_leaves_no_process_behind(scripts, tmp_path):
    """A command that starts a detached grandchild (as ``flwr run`` starts its SuperLink) and
    exits: the grandchild is stopped and reaped too, not left to PID 1."""
    _, processes = scripts
    code = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
            "start_new_session=True); print('started')")
    with processes.Supervisor(grace=2) as sup:
        done = sup.run([sys.executable, "-c", code])
        assert done.returncode == 0 and "started" in done.stdout
        orphans = sup.descendants()
        assert len(orphans) == 1 and orphans[0].ppid() == sup._me.pid  # handed to us, the subreaper, not PID 1
    assert sup.leftovers() == []


def test_deploy_script_wrapper_reaches_the_launcher():
    """scripts/deploy_local.sh execs scripts/deploy_local.py (no bash job lines, no own processes)."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "deploy_local.sh"), "0"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "--nodes must be >= 1" in proc.stderr
