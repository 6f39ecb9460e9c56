"""Run the fedcond Flower app on a SuperLink and SuperNodes with TLS and SuperNode
authentication, all on 127.0.0.1: the steps of docs/federated.md ("Across machines"), on
one machine.

    python scripts/deploy_local.py [--nodes N] [--run-config "strategy='fedavg' rounds=2"]
                                   [--certs DIR] [--timeout SECONDS] [--keep DIR]

1. certificates: a CA, and the SuperLink's certificate for 127.0.0.1 and localhost, signed
   by it (``--certs DIR`` uses DIR/ca.crt, DIR/server.pem and DIR/server.key instead);
2. one EC P-384 key pair per SuperNode, in OpenSSH format (DIR/node-<i> and .pub if given);
3. ``flower-superlink`` with ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` and
   ``--enable-supernode-auth``: only registered SuperNodes may connect;
4. a Flower configuration (``FLWR_HOME/config.toml``) naming the SuperLink and its CA;
5. ``flwr supernode register node-<i>.pub deploy`` for each SuperNode's public key;
6. ``flower-supernode --root-certificates ca.crt --auth-supernode-private-key node-<i>
   --node-config "partition-id=<i> num-partitions=<N>"`` for each;
7. ``flwr run . deploy --stream --run-config "num-clients=<N> ..."``.

Every process is stopped and reaped at the end, also on an error or Ctrl-C
(``flower_processes.Supervisor``); ``FLWR_HOME`` is a fresh folder, so ``~/.flwr`` is never
touched; the app uses this Python environment (no dependency installation). Prints
``deploy: ...`` lines, the run's log, and exits with ``flwr run``'s status (0: finished).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from flower_processes import Supervisor, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]
CONNECTION = "deploy"


def make_certificates(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> dict[str, Path]:
    """A self-signed CA and a server certificate for ``hosts`` signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            names = [x509.IPAddress(ipaddress.ip_address(h)) if h.replace(".", "").isdigit() else x509.DNSName(h)
                     for h in hosts]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(cert("fedcond test CA", ca_key, "fedcond test CA", ca_key, True)
                            .public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert(hosts[0], server_key, "fedcond test CA", ca_key, False)
                              .public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                                      serialization.NoEncryption()))
    return paths


def make_node_key(path: Path) -> Path:
    """An EC P-384 key pair in OpenSSH format: ``path`` (private) and ``path``.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                       serialization.PublicFormat.OpenSSH))
    return path


def flower_config(flwr_home: Path, address: str, ca: Path) -> Path:
    """``FLWR_HOME/config.toml`` with one SuperLink connection, ``deploy``, the default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                    f'address = "{address}"\nroot-certificates = "{ca.resolve()}"\n')
    return path


def start_superlink(sup: Supervisor, tls: dict[str, Path], port: int, env: dict[str, str], log: Path) -> str:
    """Step 3: a SuperLink with TLS that admits registered SuperNodes only; its address."""
    sup.start(["flower-superlink", "--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["cert"]),
               "--ssl-keyfile", str(tls["key"]), "--enable-supernode-auth", "--host", "127.0.0.1",
               "--port", str(port), "--disable-runtime-dependency-installation"], log, env)
    wait_for_port(port)
    return f"127.0.0.1:{port}"


def register(sup: Supervisor, public_key: Path, env: dict[str, str]) -> None:
    """Step 5: admit the SuperNode holding the private key of ``public_key``."""
    done = sup.run(["flwr", "supernode", "register", str(public_key), CONNECTION], env)
    if done.returncode != 0:
        raise RuntimeError(f"registering {public_key.name} failed:\n{done.stdout}")


def start_supernode(sup: Supervisor, address: str, ca: Path, key: Path, partition: int, partitions: int,
                    env: dict[str, str], log: Path) -> None:
    """Step 6: a SuperNode that checks the SuperLink's certificate and signs with ``key``."""
    sup.start(["flower-supernode", "--superlink", address, "--root-certificates", str(ca),
               "--auth-supernode-private-key", str(key),
               "--node-config", f"partition-id={partition} num-partitions={partitions}",
               "--host", "127.0.0.1", "--port", str(free_port())], log, env)


def run_app(sup: Supervisor, nodes: int, run_config: str, env: dict[str, str], timeout: float):
    """Step 7: ``flwr run`` of this repository's app on the deployment, logs streamed."""
    config = f"num-clients={nodes} {run_config}".strip()
    return sup.run(["flwr", "run", ".", CONNECTION, "--stream", "--run-config", config], env, cwd=REPO,
                   timeout=timeout)


def deployment_env(work: Path) -> dict[str, str]:
    """A fresh Flower home in ``work``; the app runs in this Python environment."""
    return {**os.environ, "FLWR_HOME": str(work / "flwr-home"), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


def deploy(nodes: int, run_config: str, work: Path, certs: Path | None, timeout: float) -> int:
    """The seven steps of the module docstring; returns ``flwr run``'s exit status."""
    env = deployment_env(work)
    tls = ({"ca": certs / "ca.crt", "cert": certs / "server.pem", "key": certs / "server.key"} if certs
           else make_certificates(work / "certs"))
    keys = [certs / f"node-{i}" if certs and (certs / f"node-{i}").is_file() else make_node_key(work / f"node-{i}")
            for i in range(nodes)]
    port = free_port()
    print(f"deploy: SuperLink on 127.0.0.1:{port} (TLS, SuperNode authentication), {nodes} SuperNodes, "
          f"logs in {work}", flush=True)
    with Supervisor() as sup:
        address = start_superlink(sup, tls, port, env, work / "superlink.log")
        flower_config(Path(env["FLWR_HOME"]), address, tls["ca"])
        for key in keys:
            register(sup, key.with_suffix(".pub"), env)
        for i, key in enumerate(keys):
            start_supernode(sup, address, tls["ca"], key, i, nodes, env, work / f"supernode-{i}.log")
        done = run_app(sup, nodes, run_config, env, timeout)
        print(done.stdout, flush=True)
        if done.returncode != 0:
            tail = (work / "superlink.log").read_text(errors="replace").splitlines()[-30:]
            print(f"deploy: flwr run exited with {done.returncode}; SuperLink log tail:\n" + "\n".join(tail),
                  file=sys.stderr)
    left = sup.leftovers()
    print(f"deploy: stopped every process ({len(left)} left{': ' + '; '.join(left) if left else ''})", flush=True)
    return done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="SuperNodes (= num-clients), default 2")
    parser.add_argument("--run-config", default="", help="run-config overrides, e.g. \"strategy='fedavg' rounds=2\"")
    parser.add_argument("--certs", type=Path, help="use DIR/ca.crt, server.pem, server.key (and node-<i> keys)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before the run is stopped")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (logs, keys, Flower home)")
    args = parser.parse_args()
    if args.nodes < 1:
        parser.error("--nodes must be >= 1")
    for exe in ("flower-superlink", "flower-supernode", "flwr"):
        if shutil.which(exe) is None:
            parser.error(f"{exe} is not on PATH: activate the environment fedcond is installed in")
    # SIGTERM ends the launcher like Ctrl-C does: through the Supervisor, which stops everything.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = args.keep or Path(tempfile.mkdtemp(prefix="fedcond-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return deploy(args.nodes, args.run_config, work.resolve(), args.certs, args.timeout)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
