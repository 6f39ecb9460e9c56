"""What a DP-DM run spends and the record of it: the noise calibrated for a target (ε, δ)
(:class:`Budget`) and the guarantee stored in the set's metadata (:func:`privacy_record`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fedcond.privacy.accounting import PrivacySpend, calibrate, replace_one_spend
from fedcond.privacy.mechanism import replace_sensitivity, sensitivity

if TYPE_CHECKING:  # dp_dm imports this module
    from fedcond.distill.dp_dm import DPDMConfig


@dataclass(frozen=True)
class Budget:
    """How a run spends its (ε, δ): the calibrated noise and what it is calibrated for.

    Attributes:
        sample_rate: each example's inclusion probability in a private step (q).
        steps: private steps (release: 1; iterate: the iterations).
        spend: the accountant's calibration (noise multiplier, ε spent).
        sensitivity: of one step's per-class sums and sizes.
        size_noise: std of one step's noisy class size.
    """

    sample_rate: float
    steps: int
    spend: PrivacySpend
    sensitivity: float
    size_noise: float

    @classmethod
    def plan(cls, config: DPDMConfig) -> "Budget":
        """Calibrate the noise for ``config``'s target (ε, δ), mechanism and sampling."""
        if config.mechanism == "release":
            q, steps = config.sample_rate or 1.0, 1
        else:
            q, steps = config.sample_rate, max(1, config.iterations)
        spend = calibrate(config.epsilon, config.delta, q, steps, config.accountant)
        sens = sensitivity(config.clip_norm, config.count_weight)
        return cls(q, steps, spend, sens, spend.noise_multiplier * sens / (config.count_weight * config.clip_norm))


def privacy_record(spend: PrivacySpend, config: DPDMConfig, sens: float, size_noise: float, keep: torch.Tensor,
                   sizes: torch.Tensor, normalization: str) -> dict[str, Any]:
    """The guarantee and how it was obtained, as stored in the set's metadata and run.json."""
    return {
        **spend.to_json(),
        "mechanism": config.mechanism,
        "clip_norm": config.clip_norm,
        "count_weight": config.count_weight,
        "sensitivity": sens,
        "noise_std": spend.noise_multiplier * sens,
        "bank_size": config.bank_size if config.mechanism == "release" else None,
        "adjacency": "add or remove one training example",
        "replace_one": replace_one_spend(spend, sens, replace_sensitivity(config.clip_norm, config.count_weight)),
        "library": "opacus",
        "noise_source": "operating-system entropy (numpy Philox keyed with 384 bits from secrets); never written",
        "normalization": normalization,
        "class_size_noise_std": size_noise,
        "dropped_classes": torch.nonzero(~keep).flatten().tolist(),
        "noisy_class_sizes": [round(float(s), 1) for s in sizes.cpu()],
    }
