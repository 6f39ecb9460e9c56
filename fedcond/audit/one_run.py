"""Turning correct membership guesses into a lower bound on ε, from one training run.

The test of Steinke, Nasr & Jagielski ("Privacy auditing with one (1) training run",
NeurIPS 2023): m canaries are each included in the training data independently with
probability 1/2, the algorithm runs once, and the auditor, looking only at its output,
guesses "in" or "out" for r of them (abstaining on the rest). If the algorithm is
(ε, δ)-DP, the number of correct guesses W satisfies, for every v (their Theorem 5.2,
computed as in their Appendix D):

    P[W >= v] <= P[Binomial(r, q) >= v] + 2 m δ * max_{1<=i<=v} P[v - i <= Binomial(r, q) < v] / i,

with q = e^ε / (1 + e^ε), the accuracy of ε-DP randomised response. Seeing v correct
guesses therefore rejects every ε whose right-hand side is below 1 - confidence: the
largest such ε is the empirical lower bound. Pure functions of (m, r, v, δ); scipy's
binomial distribution.
"""

from __future__ import annotations

import math

import numpy as np


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` (``m`` canaries) under an
    (``epsilon``, ``delta``)-DP algorithm: the bound above, capped at 1."""
    from scipy.stats import binom  # noqa: PLC0415  (SciPy only for this bound)

    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0:
        return min(1.0, tail)
    # P[v - i <= B < v] for i = 1..v is the running sum of pmf(v-1), pmf(v-2), ..., pmf(0).
    below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))
    spread = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + 2.0 * m * delta * spread)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε that ``v`` correct guesses out of ``r`` rejects at ``confidence``
    (0 when even ε = 0 is not rejected). Bisection to 1e-6."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    beta = 1.0 - confidence
    if r == 0 or p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:  # p grows with epsilon, to 1 (or to tail=1 at v <= r)
        low, high = high, 2.0 * high
        if high > 1e4:
            return low
    while high - low > 1e-6:
        mid = 0.5 * (low + high)
        if p_value(m, r, v, mid, delta) < beta:
            low = mid
        else:
            high = mid
    return low
