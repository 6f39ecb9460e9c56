"""Privacy accounting: from (noise, sampling rate, steps) to (ε, δ), and back.

Nothing here is derived by hand: the numbers come from Opacus's accountants
(``opacus.accountants``), which are maintained, tested against the literature and cover
what DP-DM does — a Gaussian mechanism applied ``steps`` times, each time to a Poisson
subsample of the data drawn with probability ``sample_rate`` (1.0: the whole data set),
under add/remove-one adjacency (two data sets are neighbours when one is the other plus
one example). Replace-one adjacency (one example swapped for another) is two such steps;
:func:`replace_one_spend` states what it costs. Two accountants are offered:

- ``prv`` (default): privacy-loss random variables (Gopi et al. 2021), numerically tight;
  for one Gaussian release at ε = 1, δ = 1e-5 it asks for σ = 3.79 where the exact
  (analytic Gaussian) answer is 3.73;
- ``rdp``: Rényi DP (Mironov 2017), a looser upper bound (σ = 4.06 there) that is fast
  and the classic choice of DP-SGD papers.

Opacus is imported inside the functions: it is a few seconds to import and only DP runs
need it.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from fedcond.errors import FedcondError

ACCOUNTANTS = ("prv", "rdp")


@dataclass(frozen=True)
class PrivacySpend:
    """What one DP computation cost, as recorded in run.json and the set's metadata.

    Attributes:
        epsilon, delta: the (ε, δ) guarantee the accountant certifies for the computation
            (ε at most the target asked for).
        target_epsilon: the ε the noise was calibrated for.
        noise_multiplier: σ; the Gaussian noise's std is ``noise_multiplier * sensitivity``.
        sample_rate: Poisson sampling probability of each example per step (1.0: all).
        steps: how many times the mechanism ran.
        accountant: ``prv`` or ``rdp`` (Opacus's).
    """

    epsilon: float
    delta: float
    target_epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check(delta: float, sample_rate: float, steps: int, accountant: str) -> None:
    if not 0 < delta < 1:
        raise FedcondError(f"delta must be in (0, 1), got {delta}")
    if not 0 < sample_rate <= 1:
        raise FedcondError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise FedcondError(f"steps must be >= 1, got {steps}")
    if accountant not in ACCOUNTANTS:
        raise FedcondError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")


@contextmanager
def _quiet() -> Iterator[None]:
    """Opacus warns about q = 1 (log of 0 in PRV's domain) and the RDP order range; both
    are benign for the settings used here, and would otherwise land on the user's console."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                accountant: str = "prv") -> float:
    """ε after ``steps`` Poisson-subsampled Gaussian mechanisms with ``noise_multiplier``.

    Args:
        noise_multiplier: σ, noise std divided by the L2 sensitivity.
        sample_rate: each example's inclusion probability per step (1.0: no subsampling).
        steps: compositions.
        delta: the δ at which ε is read.
        accountant: ``prv`` or ``rdp``.
    """
    _check(delta, sample_rate, steps, accountant)
    if noise_multiplier <= 0:
        raise FedcondError(f"noise multiplier must be > 0, got {noise_multiplier}")
    from opacus.accountants import create_accountant  # noqa: PLC0415  (Opacus takes seconds to import; only the accountant needs it)

    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    with _quiet():
        return float(acc.get_epsilon(delta=delta))


def calibrate(target_epsilon: float, delta: float, sample_rate: float, steps: int,
              accountant: str = "prv") -> PrivacySpend:
    """The smallest noise multiplier (to Opacus's 0.01 tolerance on ε) whose ε is at most
    ``target_epsilon`` for these settings, and the ε it actually gives."""
    _check(delta, sample_rate, steps, accountant)
    if not target_epsilon > 0:
        raise FedcondError(f"epsilon must be > 0, got {target_epsilon}")
    from opacus.accountants.utils import get_noise_multiplier  # noqa: PLC0415  (Opacus takes seconds to import; only the accountant needs it)

    try:
        with _quiet():
            sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                         steps=steps, accountant=accountant)
    except ValueError as err:  # "The privacy budget is too low."
        raise FedcondError(f"no noise level reaches epsilon {target_epsilon} at delta {delta} with "
                           f"{steps} steps at sample rate {sample_rate}: {err}") from None
    spent = epsilon_for(sigma, sample_rate, steps, delta, accountant)
    return PrivacySpend(epsilon=spent, delta=delta, target_epsilon=target_epsilon, noise_multiplier=float(sigma),
                        sample_rate=sample_rate, steps=steps, accountant=accountant)


def replace_one_spend(spend: PrivacySpend, sens: float, replace_sens: float) -> dict[str, Any]:
    """What ``spend`` (an add/remove-one guarantee) gives under replace-one adjacency.

    Always valid: group privacy over the two add/remove steps a replacement is, (2ε,
    (1 + e^ε) δ). Without subsampling (sample rate 1) the mechanism is a plain Gaussian one,
    so the tighter answer is its ε at the same δ with the replace-one sensitivity
    ``replace_sens`` (noise multiplier ``σ * sens / replace_sens``); under Poisson
    subsampling the add/remove accountant does not cover replacement, so only group
    privacy is stated.
    """
    out: dict[str, Any] = {
        "adjacency": "replace one training example by another",
        "sensitivity": replace_sens,
        "group_privacy_epsilon": 2 * spend.epsilon,
        "group_privacy_delta": (1 + math.exp(spend.epsilon)) * spend.delta,
        "epsilon": None,
        "delta": spend.delta,
    }
    if spend.sample_rate >= 1.0:
        out["epsilon"] = epsilon_for(spend.noise_multiplier * sens / replace_sens, 1.0, spend.steps, spend.delta,
                                     spend.accountant)
    return out
