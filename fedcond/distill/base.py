"""The ``Distiller`` interface, its configuration base class, callbacks and registry.

Every method — coreset selections and learned distillations alike — is a ``Distiller``:
``distill(dataset, config, generator, device, callbacks) -> SyntheticSet``. The CLI, the
federated client and the continual buffer only ever call that, so any method works in
all three places.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Protocol

import torch

from fedcond.data import ImageDataset
from fedcond.errors import FedcondError
from fedcond.synthetic import SyntheticSet


@dataclass
class DistillConfig:
    """Settings every method shares; methods subclass it with their own fields."""

    ipc: int = 10
    model: str = "convnet"  # network used for features / matching

    def __post_init__(self) -> None:
        if self.ipc < 1:
            raise FedcondError(f"ipc must be >= 1, got {self.ipc}")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DistillConfig":
        """Build from a dict (CLI flags, TOML), rejecting unknown keys with a clear message."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise FedcondError(
                f"unknown option(s) for {cls.__name__}: {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)


class Callback(Protocol):
    """Receives progress from iterative methods (progress bars, logging, periodic eval)."""

    def __call__(self, iteration: int, total: int, metrics: dict[str, float]) -> None: ...


class Distiller(Protocol):
    """A way of turning a labelled data set into a SyntheticSet."""

    name: ClassVar[str]
    config_class: ClassVar[type[DistillConfig]]

    def distill(
        self,
        dataset: ImageDataset,
        config: DistillConfig,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        callbacks: list[Callback] | None = None,
    ) -> SyntheticSet: ...


_REGISTRY: dict[str, Callable[[], Distiller]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a Distiller to the registry under ``name``."""

    def wrap(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_distiller(name: str) -> Distiller:
    """A Distiller instance by method name (see :func:`method_names`)."""
    import fedcond.distill  # noqa: F401,PLC0415  (registers the built-in methods)

    try:
        return _REGISTRY[name.lower()]()
    except KeyError:
        raise FedcondError(f"unknown method {name!r}: use one of {', '.join(method_names())}") from None


def method_names() -> tuple[str, ...]:
    import fedcond.distill  # noqa: F401,PLC0415

    return tuple(_REGISTRY)


def emit(callbacks: list[Callback] | None, iteration: int, total: int, metrics: dict[str, float]) -> None:
    """Send one progress event to every callback."""
    for cb in callbacks or ():
        cb(iteration, total, metrics)


def make_set(
    dataset: ImageDataset,
    images: torch.Tensor,
    labels: torch.Tensor,
    method: str,
    config: DistillConfig,
    seed: int | None,
) -> SyntheticSet:
    """Wrap result tensors as a (detached, CPU) SyntheticSet with the data set's metadata."""
    return SyntheticSet(
        images=images.detach().cpu().float().contiguous(),
        labels=labels.detach().cpu().contiguous(),
        classes=dataset.classes,
        mean=dataset.mean,
        std=dataset.std,
        method=method,
        ipc=config.ipc,
        dataset=dataset.name,
        seed=seed,
        config=config.to_dict(),
    ).validate()


def describe_difference(there: dict[str, Any], now: dict[str, Any], prefix: str = "") -> str:
    """``"key: <there> there, <now> now"`` for the first differing (dotted, nested) key of two
    settings dicts: what a refused checkpoint or expert folder tells the user."""
    for key in sorted(set(there) | set(now)):
        a, b = there.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and a != b:
            return describe_difference(a, b, f"{prefix}{key}.")
        if a != b:
            return f"{prefix}{key}: {a!r} there, {b!r} now"
    return "unknown difference"


def generator_seed(generator: torch.Generator) -> int:
    """The seed a generator was created with (recorded in the SyntheticSet)."""
    return int(generator.initial_seed())
