"""The ``Distiller`` interface, its configuration base class, callbacks and registry.

Every method — coreset selections and learned distillations alike — is a ``Distiller``:
``distill(dataset, config, generator, device, callbacks, inputs) -> SyntheticSet``, where
``inputs`` (:class:`DistillInputs`) carry what only some methods take (a starting set, a
server's model) and the others refuse with one line. The CLI, the
federated client and the continual buffer build one with :func:`make_distiller` and only
ever call that, so any method works in all three places, with the same option checks.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

import torch
from torch import nn

from fedcond.data import ImageDataset
from fedcond.errors import FedcondError
from fedcond.synthetic import SyntheticSet

C = TypeVar("C", bound="DistillConfig")


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
    def coerce(cls: type[C], config: "DistillConfig") -> C:
        """``config`` as this class: itself if it is one, else rebuilt from its values."""
        return config if isinstance(config, cls) else cls(**config.to_dict())

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


class Callback:
    """What a run reports (progress bars, logging, periodic evaluation); every hook does
    nothing unless a subclass overrides it. A plain function ``fn(iteration, total,
    metrics)`` in a ``callbacks`` list stands for ``on_progress`` (see :func:`as_callbacks`)."""

    def on_progress(self, iteration: int, total: int, metrics: dict[str, float]) -> None:
        """Every ``log_every`` iterations and at the end (coresets: per class selected)."""

    def on_snapshot(self, iteration: int, synthetic_set: SyntheticSet) -> None:
        """Iterative methods, every ``eval_every`` iterations: the set as it is now."""

    def on_experts(self, done: int, total: int) -> None:
        """MTT, before its iterations: expert epochs trained so far."""


ProgressFn = Callable[[int, int, dict[str, float]], None]
Callbacks = Sequence[Callback | ProgressFn] | None


class _ProgressFunction(Callback):
    def __init__(self, fn: ProgressFn) -> None:
        self.fn = fn

    def on_progress(self, iteration: int, total: int, metrics: dict[str, float]) -> None:
        self.fn(iteration, total, metrics)


def as_callbacks(callbacks: Callbacks) -> list[Callback]:
    """``callbacks`` as Callback objects, a plain function wrapped as its ``on_progress``."""
    out: list[Callback] = []
    for cb in callbacks or ():
        if not isinstance(cb, Callback):
            # an object with hooks but not a Callback would otherwise lose them silently
            hooks = [h for h in ("on_progress", "on_snapshot", "on_experts") if hasattr(cb, h)]
            if hooks or not callable(cb):
                raise TypeError(f"{type(cb).__name__} is not a fedcond.distill.base.Callback"
                                + (f" (it defines {', '.join(hooks)}): subclass Callback" if hooks else
                                   " nor a function fn(iteration, total, metrics)"))
            cb = _ProgressFunction(cb)
        out.append(cb)
    return out


def overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` does something on ``hook`` (so a costly argument is worth making)."""
    return getattr(type(callback), hook) is not getattr(Callback, hook)


@dataclass(frozen=True)
class DistillInputs:
    """What only some methods take besides the data, refused clearly by the others
    (see :attr:`Distiller.accepts`).

    Attributes:
        initial: a set to refine instead of starting afresh (its images and hard labels;
            iterative methods; FedDM's previous-round set).
        embed_model: a fixed network to match in instead of fresh random ones (DM; FedDM's
            global model from the server, on the run's device, used in the mode it is in).
    """

    initial: SyntheticSet | None = None
    embed_model: nn.Module | None = None

    def given(self) -> list[str]:
        """The names of the inputs that are set."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


class Distiller(ABC):
    """A way of turning a labelled data set into a SyntheticSet; every method is one.

    A method sets ``config_class`` (its :class:`DistillConfig` subclass), lists in ``accepts``
    the :class:`DistillInputs` fields it takes, and implements :meth:`_distill`;
    :meth:`distill` is the one entry point, the same for every method. A differentially
    private method sets ``private``: callers ask it, not the config's fields, whether the data
    must stay private outside the mechanism (public normalisation, no timings, no sizes).
    """

    name: ClassVar[str]
    config_class: ClassVar[type[DistillConfig]]
    accepts: ClassVar[frozenset[str]] = frozenset()
    private: ClassVar[bool] = False

    def distill(
        self,
        dataset: ImageDataset,
        config: DistillConfig,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        callbacks: Callbacks = None,
        inputs: DistillInputs | None = None,
    ) -> SyntheticSet:
        """Distill ``dataset`` into a set of ``config.ipc`` images per class, drawing all
        randomness from ``generator``, on ``device`` (None: the CPU), reporting to ``callbacks``.

        Raises:
            FedcondError: ``inputs`` holds something this method does not take.
        """
        inputs = inputs or DistillInputs()
        for given in inputs.given():
            if given not in self.accepts:
                takes = ", ".join(sorted(self.accepts)) or "none"
                raise FedcondError(f"method {self.name} takes no {given} input (the inputs it takes: {takes})")
        device = torch.device(device if device is not None else "cpu")
        return self._distill(dataset, self.config_class.coerce(config), generator, device, callbacks, inputs)

    def distill_many(
        self,
        datasets: Sequence[ImageDataset],
        config: DistillConfig,
        generators: Sequence[torch.Generator],
        device: torch.device | str | None = None,
        callbacks: Callbacks = None,
    ) -> list[SyntheticSet]:
        """One set per data set (federated clients), set i as ``distill(datasets[i], config,
        generators[i], device, callbacks)`` makes it; a method may run them together (DM)."""
        if len(datasets) != len(generators):
            raise ValueError(f"{len(datasets)} data sets but {len(generators)} generators")
        device = torch.device(device if device is not None else "cpu")
        return self._distill_many(datasets, self.config_class.coerce(config), generators, device, callbacks)

    def _distill_many(self, datasets: Sequence[ImageDataset], config: Any, generators: Sequence[torch.Generator],
                      device: torch.device, callbacks: Callbacks) -> list[SyntheticSet]:
        """How a method runs many data sets (``config`` a ``config_class``): one at a time here."""
        return [self.distill(d, config, g, device, callbacks) for d, g in zip(datasets, generators)]

    @abstractmethod
    def _distill(self, dataset: ImageDataset, config: Any, generator: torch.Generator, device: torch.device,
                 callbacks: Callbacks, inputs: DistillInputs) -> SyntheticSet:
        """The method itself: ``config`` is a ``config_class``, ``inputs`` hold only what it accepts."""


_REGISTRY: dict[str, type[Distiller]] = {}
# The built-in methods and the module (in fedcond.distill) that registers each: imported when
# the method is first asked for, so using one method does not import every other.
BUILTIN_METHODS = {"random": "coreset", "herding": "coreset", "kcenter": "coreset", "dc": "dc", "dsa": "dc",
                   "dd": "dd", "dm": "dm", "dp-dm": "dp_dm", "frepo": "frepo", "kip": "kip", "mtt": "mtt"}


D = TypeVar("D", bound=type[Distiller])


def register(name: str) -> Callable[[D], D]:
    """Class decorator adding a Distiller to the registry under ``name``."""

    def wrap(cls: D) -> D:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_distiller(name: str) -> Distiller:
    """A Distiller instance by method name (see :func:`method_names`)."""
    key = name.lower()
    if key not in _REGISTRY and key in BUILTIN_METHODS:
        importlib.import_module(f"fedcond.distill.{BUILTIN_METHODS[key]}")  # registers it
    try:
        return _REGISTRY[key]()
    except KeyError:
        raise FedcondError(f"unknown method {name!r}: use one of {', '.join(method_names())}") from None


def method_names() -> tuple[str, ...]:
    """The method names: the built-in ones, then any registered from elsewhere."""
    return tuple(dict.fromkeys([*BUILTIN_METHODS, *_REGISTRY]))


def make_distiller(
    method: str, options: Mapping[str, Any] | None = None, *, fixed: Mapping[str, Any] | None = None,
) -> tuple[Distiller, DistillConfig]:
    """The distiller called ``method`` and its config: what the CLI, the federated client,
    the continual buffer and the benchmarks distill with, each giving its values the same way.

    Args:
        method: a method name (see :func:`method_names`).
        options: the user's values, by config field (``-o key=value``, a run config's method
            options, a buffer's ``options``; a script's own settings): each must be a field of
            the method's config, and none may be one of ``fixed``.
        fixed: the caller's values that the user may not override (ipc, model and iterations
            from its own flags, a privacy budget, a precision): each is set where the method's
            config has the field and dropped where it has not (a coreset takes no iterations);
            None keeps the method's default. A default the user may override is the caller's
            value only where the user gave none: ``{k: v for k, v in mine.items() if k not in options}``.
    Raises:
        FedcondError: an unknown method, or an option the method refuses, that is no field of
            its config or that is one of ``fixed``, naming it and listing the known options.
    """
    distiller = get_distiller(method)
    options, fixed = dict(options or {}), dict(fixed or {})
    # A method may refuse an option with its reason (dp-dm: a noise seed would void the guarantee).
    for key, reason in getattr(distiller.config_class, "refused_options", {}).items():
        if key in options:
            raise FedcondError(f"option {key} is refused: {reason}")
    names = {f.name for f in fields(distiller.config_class)}
    known = sorted(names - set(fixed))
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise FedcondError(f"unknown option(s) for method {method}: {', '.join(unknown)}; known: {', '.join(known)}")
    values = {**options, **{k: v for k, v in fixed.items() if k in names and v is not None}}
    return distiller, distiller.config_class.from_dict(values)


def emit(callbacks: Callbacks, iteration: int, total: int, metrics: dict[str, float]) -> None:
    """Send one progress event to every callback."""
    for cb in as_callbacks(callbacks):
        cb.on_progress(iteration, total, metrics)


def make_set(
    dataset: ImageDataset,
    images: torch.Tensor,
    labels: torch.Tensor,
    method: str,
    config: DistillConfig,
    seed: int | None,
    factor: int = 1,
) -> SyntheticSet:
    """Wrap result tensors as a (detached, CPU) SyntheticSet with the data set's metadata
    (``factor`` > 1: the images are multi-formation mosaics, see :mod:`fedcond.formation`)."""
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
        factor=factor,
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
