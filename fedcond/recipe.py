"""The training recipe: one optimiser, schedule and augmentation for every learner of a comparison.

A comparison of federated or continual methods measures the methods only when every network
in it is trained the same way. Whatever trains a network in fedcond — FedAvg/FedProx local
training, the server's training on pooled synthetic sets, the random-real and herding
controls, the all-data upper bound, every continual strategy and the distilled buffer's
training — takes its optimiser, its learning-rate schedule and its augmentation from one
:class:`Recipe`. What may differ per learner is what a validation grid tunes (learning rate,
epochs), and that is written beside each learner in the reports.

Augmentation is the part that moved results most (DSA lifts training on few images by 5-8
points on digits), so a comparison whose learners' augmentation differs is refused by
:func:`check_same_recipe` unless the user asks for it by name; the report then says so in
its first lines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from fedcond.errors import FedcondError

AUGMENTS = ("auto", "none")  # or a DSA strategy string such as "crop_flip"
SCHEDULES = ("step-half", "constant")


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: SGD with momentum and weight decay, a schedule, an augmentation.

    Attributes:
        momentum, weight_decay: SGD's (the distillation literature's protocol: 0.9, 5e-4).
        augment: ``"auto"`` (DSA's ``crop_scale_rotate`` for one-channel images, its default
            colour set otherwise), ``"none"``, or a DSA strategy string (``"crop_flip"``).
        schedule: ``"step-half"``: lr / 10 at half the epochs of a training from scratch;
            ``"constant"``: no decay. Training that continues a model (a FedAvg client's
            local epochs, a continual experience) keeps its rate within the call: there the
            rounds or experiences are the schedule.
    """

    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "auto"
    schedule: str = "step-half"

    def __post_init__(self) -> None:
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise FedcondError(f"recipe: momentum must be in [0, 1) and weight decay >= 0, got {self.momentum}, "
                               f"{self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise FedcondError(f"recipe: schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.augment not in AUGMENTS:
            from fedcond.augment import parse_strategy  # noqa: PLC0415  (torch only when a strategy is named)

            parse_strategy(self.augment)

    def augment_strategy(self, channels: int) -> str | None:
        """The DSA strategy this recipe applies to images of ``channels`` channels (None: none)."""
        if self.augment == "none":
            return None
        if self.augment == "auto":
            from fedcond.augment import DEFAULT_STRATEGY  # noqa: PLC0415  (torch's augmentation only when a recipe augments)

            return "crop_scale_rotate" if channels == 1 else DEFAULT_STRATEGY
        return self.augment

    def augmenter(self, channels: int):
        """The batch augmentation (a :class:`fedcond.augment.DSA`) for ``channels``, or None."""
        strategy = self.augment_strategy(channels)
        if strategy is None:
            return None
        from fedcond.augment import DSA  # noqa: PLC0415  (torch's augmentation only when a recipe augments)

        return DSA(strategy)

    def train_kwargs(self, channels: int) -> dict[str, Any]:
        """Keyword arguments of :func:`fedcond.train.train_model` that this recipe sets."""
        return {"momentum": self.momentum, "weight_decay": self.weight_decay, "augment": self.augmenter(channels),
                "lr_decay_at_half": self.schedule == "step-half"}

    def describe(self, channels: int | None = None) -> str:
        """One line for a report: ``SGD (momentum 0.9, weight decay 0.0005), lr/10 at half, DSA crop_scale_rotate``."""
        schedule = "lr / 10 at half the epochs" if self.schedule == "step-half" else "constant lr"
        if channels is None:
            augment = f"augment {self.augment}"
        else:
            strategy = self.augment_strategy(channels)
            augment = f"DSA {strategy}" if strategy else "no augmentation"
        return f"SGD (momentum {self.momentum:g}, weight decay {self.weight_decay:g}), {schedule}, {augment}"

    def to_json(self) -> dict[str, Any]:
        """The recipe as stored in results files."""
        return asdict(self)

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> "Recipe":
        """The inverse of :meth:`to_json`; unknown keys are an error."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise FedcondError(f"recipe: unknown key(s) {', '.join(unknown)}")
        return cls(**values)


def check_same_recipe(recipes: Mapping[str, Recipe], allow_unequal: bool = False) -> list[str]:
    """Refuse a comparison whose learners train with different recipes, unless ``allow_unequal``.

    ``recipes`` maps each learner's name to its recipe. Returns the lines a report must put
    first when the recipes differ and that was allowed (an empty list when they agree).
    """
    distinct = {r for r in recipes.values()}
    if len(distinct) <= 1:
        return []
    groups: dict[Recipe, list[str]] = {}
    for name, recipe in recipes.items():
        groups.setdefault(recipe, []).append(name)
    what = "; ".join(f"{', '.join(names)}: {r.describe()}" for r, names in groups.items())
    if not allow_unequal:
        raise FedcondError(f"the learners of this comparison would train with different recipes ({what}); "
                           "use one recipe, or ask for the unequal comparison by name (--unequal-recipe)")
    return [f"UNEQUAL RECIPES (asked for with --unequal-recipe): {what}. Differences between these learners "
            "measure the recipe as well as the method."]
