"""The secret randomness of a DP mechanism: drawn from the operating system, never written.

A DP guarantee holds only against someone who cannot recompute the noise. Everything a
fedcond run writes (the set, run.json, checkpoints) is readable by whoever gets the
outputs, so the noise must not follow from anything written there: not the run's
``--seed`` (recorded in the set), not a stored seed, not a stored generator state.

:class:`SecretNoise` is numpy's Philox generator keyed directly from ``secrets`` (the
operating system's cryptographic entropy): a 128-bit key and a 256-bit counter, 384 bits in
all, not squeezed through a 32- or 64-bit seed. Torch's CPU generator would not do: it is
MT19937 seeded from a 64-bit value of which only the low 32 bits count
(``manual_seed(s)`` and ``manual_seed(s + 2**32)`` draw the same), so 2^32 guesses recover
it. Philox (Salmon et al. 2011) is a counter-based generator built like a weakened block
cipher; unlike PCG64, whose state has been recovered from raw outputs (Bouillaguet et al.
2020), no practical state recovery from its outputs is known, and the outputs are never
shown raw anyway: only their sum with private data is released. The object has no
``state_dict``: nothing about it can be checkpointed. What a resumed run needs is the noisy
release itself, which is DP output (:mod:`fedcond.distill.dp_dm`).

Floating-point caveat (Mironov 2012, "On significance of the least significant bits for
differential privacy"): the proof is for real-valued Gaussian noise; a sample in floating
point has gaps whose pattern depends on the magnitude of the noisy value, which in
principle lets the low-order bits of a release reveal the value before noise. The noise
is drawn in float64 and the noisy sums are rounded to float32 before anything uses them, so
the released numbers carry far coarser steps than the noise's own float64 grid; this blunts
that attack but is not a proof. fedcond does not implement a discrete or snapped Gaussian
(Canonne, Kamath & Steinke 2020): its guarantee is the one of the idealised mechanism.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

KEY_BITS, COUNTER_BITS = 128, 256


class SecretNoise:
    """Gaussian noise and Poisson samples from a generator keyed by operating-system entropy.

    Every instance draws a fresh key; there is deliberately no way to seed it, read its key
    or save its state.
    """

    __slots__ = ("_rng",)

    def __init__(self) -> None:
        bit_generator = np.random.Philox(key=secrets.randbits(KEY_BITS), counter=secrets.randbits(COUNTER_BITS))
        self._rng = np.random.Generator(bit_generator)

    def gaussian(self, shape: tuple[int, ...], std: float) -> torch.Tensor:
        """Float64 samples of N(0, std^2), on the CPU."""
        return torch.from_numpy(self._rng.standard_normal(shape, dtype=np.float64) * std)

    def poisson_sample(self, n: int, rate: float) -> torch.Tensor:
        """Indices of a Poisson sample of ``range(n)``: each index independently with
        probability ``rate`` (all of them for rate >= 1), on the CPU."""
        if rate >= 1.0:
            return torch.arange(n)
        return torch.from_numpy(np.flatnonzero(self._rng.random(n) < rate)).long()

    def __reduce__(self):
        raise TypeError("SecretNoise cannot be pickled: its state must never be written")

    def __repr__(self) -> str:
        return "SecretNoise(<key from the operating system, not shown>)"

