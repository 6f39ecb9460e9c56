"""Start Flower's processes and stop every one of them, leaving nothing behind.

Flower's executables start processes of their own: ``flwr run`` starts a local SuperLink
detached from it (a new session, orphaned as soon as ``flwr`` exits), a SuperLink or
SuperNode starts a ``flower-superexec`` in yet another session, which starts
``flwr-simulation`` / ``flwr-serverapp`` / ``flwr-clientapp`` per run and does not reap
them. Killing the process one started therefore misses most of them, and every orphan
that dies becomes a zombie of PID 1 — forever, where PID 1 does not reap (containers):
those were deploy_local.sh's "defunct flower-superexec" lines.

:class:`Supervisor` makes this process a *child subreaper* (Linux ``prctl``), so every
process started below it, detached or orphaned, stays its descendant; it starts each
command in a process group of its own and, on exit, stops them all: SIGTERM to the
commands it started (the SuperLink and SuperNodes then stop their own SuperExec), then to
every remaining descendant, SIGKILL after a grace period, and it reaps each one. Used by
``scripts/deploy_local.py`` and the tests that run ``flwr``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import psutil

PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of asking."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    """Block until something listens on ``host:port``; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.25)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def _set_subreaper(on: bool) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0


class Supervisor:
    """A context manager that starts commands and, on exit, stops and reaps everything they
    started (see the module docstring). ``leftovers()`` lists what is still there."""

    def __init__(self, grace: float = 10.0) -> None:
        self.grace = grace
        self.started: list[subprocess.Popen] = []
        self._me = psutil.Process()
        self._before: set[int] = set()

    def __enter__(self) -> "Supervisor":
        self._before = {p.pid for p in self._me.children(recursive=True)}
        self._subreaper = _set_subreaper(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.stop()
        finally:
            if self._subreaper:
                _set_subreaper(False)

    def start(self, cmd: Sequence[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        """Start ``cmd`` in a process group of its own, stdout and stderr into ``log``."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        self.started.append(proc)
        return proc

    def run(self, cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 600.0) -> subprocess.CompletedProcess:
        """Run ``cmd`` to its end (its own process group; killed with it after ``timeout``).

        Output goes through a file, not a pipe: a process ``cmd`` leaves running (``flwr``'s
        local SuperLink) may hold its output open, and reading a pipe would wait for it."""
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True, text=True)
            self.started.append(proc)
            try:
                proc.wait(timeout=timeout)
                note = ""
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
                note = f"\n[killed after {timeout:.0f} s]"
            out.seek(0)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out.read() + note, None)

    def descendants(self) -> list[psutil.Process]:
        """Every process below this one that it did not have before (zombies included)."""
        try:
            return [p for p in self._me.children(recursive=True) if p.pid not in self._before]
        except psutil.NoSuchProcess:
            return []

    def leftovers(self) -> list[str]:
        """What remains of the started processes, zombies included: ``pid command`` lines."""
        return [f"{p.pid} {command_line(p)}" for p in self.descendants() if _exists(p)]

    def stop(self) -> None:
        """SIGTERM the started commands and wait, then every descendant; SIGKILL what is
        left after the grace period; reap all of them."""
        for proc in self.started:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        self._wait(self.grace / 2)
        for p in self.descendants():
            _signal(p, signal.SIGTERM)
        self._wait(self.grace / 2)
        for p in self.descendants():
            _signal(p, signal.SIGKILL)
        self._wait(5.0)

    def _wait(self, seconds: float) -> None:
        """Reap our dead children until no descendant is left or ``seconds`` have passed
        (orphans keep arriving as their parents die)."""
        deadline = time.monotonic() + seconds
        while True:
            for proc in self.started:
                proc.poll()
            for p in self.descendants():
                try:  # reaps it if it is a dead child of ours (started, or an orphan handed to us)
                    os.waitpid(p.pid, os.WNOHANG)
                except ChildProcessError:  # not our child (yet): its parent reaps it, or hands it to us
                    pass
            if not self.descendants() or time.monotonic() >= deadline:
                return
            time.sleep(0.2)


def command_line(process: psutil.Process) -> str:
    """A process's command line; ``[name] <defunct>`` for a zombie, "" once it is gone."""
    try:
        return " ".join(process.cmdline()) or process.name()
    except psutil.ZombieProcess:
        return f"[{process.name()}] <defunct>"
    except psutil.NoSuchProcess:
        return ""


def _exists(process: psutil.Process) -> bool:
    try:
        process.status()
        return True
    except psutil.ZombieProcess:
        return True
    except psutil.NoSuchProcess:
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: its group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


def _signal(process: psutil.Process, sig: int) -> None:
    try:
        process.send_signal(sig)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
