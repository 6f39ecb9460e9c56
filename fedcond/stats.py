"""Spread over seeds: mean, sample standard deviation, 95 % intervals, paired gains.

A headline cell runs several independent seeds (partition, distillation and network
initialisation all change). Its report gives the mean, the *sample* standard deviation
(n - 1) and Student's t interval of the mean; a gain of method A over a control B is the mean
of the per-seed paired differences A_s - B_s with its own interval, and "A beats B" needs that
interval above zero. One seed gives a mean and no interval (reported as such, never as 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Spread:
    """A sample's summary: ``n`` values, their mean, sample std and the 95 % t interval of the mean."""

    n: int
    mean: float
    std: float | None  # sample (n - 1) std; None for one value
    low: float | None  # 95 % interval of the mean; None for one value
    high: float | None

    @property
    def above_zero(self) -> bool:
        """Whether the interval lies above zero (a gain that holds); False without an interval."""
        return self.low is not None and self.low > 0

    def to_json(self) -> dict[str, Any]:
        """As stored in results files."""
        return asdict(self)

    def format(self, scale: float = 1.0, spec: str = ".3f") -> str:
        """``0.618 ± 0.004 (95 % CI 0.608 to 0.628, n = 3)``; ``scale`` = 100 gives points."""
        mean = f"{self.mean * scale:{spec}}"
        if self.std is None:
            return f"{mean} (n = 1, no interval)"
        return (f"{mean} ± {self.std * scale:{spec.lstrip('+')}} (95 % CI {self.low * scale:{spec}} to "
                f"{self.high * scale:{spec}}, n = {self.n})")


def spread(values: Sequence[float], confidence: float = 0.95) -> Spread:
    """Mean, sample std and Student's t interval of the mean of ``values``."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread of no values")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return Spread(1, mean, None, None, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


def paired_gain(treated: Sequence[float], control: Sequence[float], confidence: float = 0.95) -> Spread:
    """The spread of per-seed differences ``treated[s] - control[s]`` (same seeds, same order)."""
    if len(treated) != len(control):
        raise ValueError(f"paired gain needs one control per seed: {len(treated)} against {len(control)}")
    return spread([t - c for t, c in zip(treated, control)], confidence)
