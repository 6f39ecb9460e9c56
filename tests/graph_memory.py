"""How much memory autograd holds for a backward pass, measured the same way on any device.

``torch.cuda.max_memory_allocated`` answers "peak memory" on a GPU only. The part of it
that grows with unrolled training steps is what autograd *saves* for backward (activations,
weights of every step). :class:`SavedTensorMeter` counts exactly that, on CPU or GPU,
through ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd saves is
wrapped in a holder that adds its bytes when saved and subtracts them when the graph
releases it, and the meter keeps the peak. A tensor saved by several operations counts
each time, so the number is an upper bound on extra memory — but it is deterministic,
which makes "constant in N" vs "linear in N" testable without a GPU. Measure backward
passes without ``retain_graph=True``: a retained graph is then freed only by Python's cycle
collector (a holder of an operation's output refers back to that operation), so the peak
would also count graphs that are already unreachable.
"""

from __future__ import annotations

from types import TracebackType

import torch


class _Held:
    __slots__ = ("tensor", "meter", "nbytes")

    def __init__(self, tensor: torch.Tensor, meter: "SavedTensorMeter") -> None:
        self.tensor, self.meter = tensor, meter
        self.nbytes = tensor.numel() * tensor.element_size()
        meter.live += self.nbytes
        meter.peak = max(meter.peak, meter.live)

    def __del__(self) -> None:
        self.meter.live -= self.nbytes


class SavedTensorMeter:
    """Context manager: ``peak`` = the most bytes autograd held saved at once inside it."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._hooks: torch.autograd.graph.saved_tensors_hooks | None = None

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: _Held(t, self), lambda held: held.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(kind, err, tb)
