"""What every run records beside its outputs: versions, device, time; and atomic JSON writes."""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from fedcond.errors import FedcondError
from fedcond.precision import has_fast_bfloat16

_PACKAGES = ("fedcond", "torch", "torchvision", "numpy", "flwr", "flwr-datasets", "avalanche-lib", "safetensors",
             "opacus")


def package_versions() -> dict[str, str | None]:
    """Installed versions of fedcond and the libraries whose behaviour shapes results."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_description(device: torch.device) -> str:
    """Human-readable device: GPU model, or CPU with its core count (and AMX, which makes bfloat16
    fast and so decides what ``auto`` precision picks and how long a run takes)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    amx = ", AMX" if has_fast_bfloat16(device) else ""
    return (
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"threads{amx})"
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a user error."""

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FedcondError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise FedcondError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak GPU memory allocated by torch on ``device``, or this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def shell_command(argv: list[str], drop: tuple[str, ...] = ()) -> str:
    """A script's command line as a shell takes it back: ``python`` first, values quoted where
    needed (an empty ``--mem-batch ""`` survives), less the options in ``drop`` and their values
    (options such as ``--cells`` or ``--note`` that change no result)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in drop:
            skip = True
        elif not arg.startswith(tuple(f"{d}=" for d in drop)):
            kept.append(arg)
    return shlex.join(["python", *kept])


def run_record(device: torch.device, **fields: Any) -> dict[str, Any]:
    """A run's provenance: command line, time, versions, device, plus ``fields``."""
    # the CLI as `fedcond ...` whether it ran as the entry point or as `python -m fedcond.cli`
    cli = sys.argv and sys.argv[0].endswith(("fedcond", os.path.join("fedcond", "cli.py")))
    return {
        "command": shlex.join(["fedcond", *sys.argv[1:]]) if cli else " ".join(sys.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": package_versions(),
        "device": str(device),
        "device_name": device_description(device),
        **fields,
    }


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> int:
    """Write ``data`` to a temporary name and move it into place, so a crash never leaves a
    half-written file at ``path``; create missing folders. Returns the bytes written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode())
    return Path(path)
