"""The ``precision`` setting: which arithmetic a training or distillation loop runs in.

One name everywhere (CLI ``--precision``, configs' and Flower's run config ``precision``,
the continual buffer's ``DistillSpec(precision=...)``), in PyTorch's own terms:

- ``float32``: plain float32, no autocast (bit for bit what earlier versions ran);
- ``bfloat16``: mixed precision, ``torch.autocast(device, dtype=torch.bfloat16)`` around
  the forward passes and the loss; weights, optimiser state and images stay float32;
- ``auto`` (the default): ``bfloat16`` where the device has fast bfloat16 arithmetic, a
  CUDA GPU that supports it or a CPU with AMX (``amx_bf16`` in /proc/cpuinfo), else
  ``float32``. A CPU with only ``avx512_bf16`` resolves to float32: there the ConvNet's
  128-channel convolutions run slower in bfloat16 than in float32.

Chosen by measurement (``benchmarks/results/fast_by_default.md``): bfloat16 trains and
distils to float32's accuracy within the run-to-run noise. What ran — the resolved value,
never ``auto`` — is recorded in every run.json / results.json.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

from fedcond.errors import FedcondError

if TYPE_CHECKING:  # annotations only: the functions that need torch import it
    import torch

PRECISIONS = ("auto", "float32", "bfloat16")
# The one default of every ``precision`` setting (configs, commands, the plugin).
DEFAULT_PRECISION = "auto"
CPUINFO = Path("/proc/cpuinfo")


def __getattr__(name: str) -> Any:
    """``DTYPES`` (precision name -> torch dtype), made on first use: importing this module
    loads no torch, so torch-free configs (``fedcond.federated.config``, whose ``--help`` must
    be quick) can take :data:`PRECISIONS` and :data:`DEFAULT_PRECISION` from here."""
    if name == "DTYPES":
        import torch  # noqa: PLC0415  (torch-free import, see above)

        return {"float32": torch.float32, "bfloat16": torch.bfloat16}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_precision(name: str, what: str = "precision") -> str:
    """``name`` if it is one of :data:`PRECISIONS`, else a ``FedcondError`` naming ``what``."""
    if name not in PRECISIONS:
        raise FedcondError(f"{what} must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (the ``flags`` line of /proc/cpuinfo; empty where there is none)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name (the ``model name`` line of /proc/cpuinfo; else the platform's
    processor string), for a results file's machine line."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform  # noqa: PLC0415  (only where /proc/cpuinfo names no model)

    return platform.processor() or "unknown CPU"


def has_fast_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bfloat16 faster than float32: a CUDA GPU with bfloat16
    support, or a CPU with AMX tiles for bfloat16 (``amx_bf16``)."""
    import torch  # noqa: PLC0415  (torch-free import, see __getattr__)

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return "amx_bf16" in cpu_flags()
    return False


def resolve_precision(name: str, device: torch.device | str) -> str:
    """``float32`` or ``bfloat16``: ``name`` itself, or for ``auto`` what ``device`` runs fast."""
    check_precision(name)
    if name == "auto":
        return "bfloat16" if has_fast_bfloat16(device) else "float32"
    return name


def autocast(precision: str, device: torch.device | str) -> ContextManager:
    """The context a forward pass and its loss run in: autocast to bfloat16, or nothing.

    ``precision`` must be resolved (``float32`` or ``bfloat16``).
    """
    if precision == "float32":
        return contextlib.nullcontext()
    if precision != "bfloat16":
        raise ValueError(f"autocast needs a resolved precision (float32 or bfloat16), got {precision!r}")
    import torch  # noqa: PLC0415  (torch-free import, see __getattr__)

    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
