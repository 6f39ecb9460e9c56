"""Continual learning with a distilled replay buffer, as Avalanche parts.

- :mod:`~fedcond.continual.budget`      per-class quotas and sub-selection (pure rules)
- :mod:`~fedcond.continual.experience`  an Avalanche experience -> tensors / ImageDataset
- :mod:`~fedcond.continual.buffer`      ``DistilledBuffer`` storage policy (``ExemplarsBuffer``)
- :mod:`~fedcond.continual.plugin`      the plugins that use it, one per mode (each a ``ReplayPlugin``):
                                        ``DistilledReplayPlugin`` (default), ``DistilledFinetunePlugin``,
                                        ``DistilledMixPlugin``
- :mod:`~fedcond.continual.benchmarks`  split-digits / SplitMNIST / SplitFashionMNIST / SplitCIFAR-10
- :mod:`~fedcond.continual.strategies`  the compared Avalanche templates
- :mod:`~fedcond.continual.runner`      strategies x memories x seeds with EvaluationPlugin
- :mod:`~fedcond.continual.report`      results.json and plots

Importing this package imports Avalanche; the core of fedcond never does.
"""

import warnings

# Avalanche imports qpsolvers (for GEM, which fedcond never uses); without a QP solver
# installed, qpsolvers warns at import time. Nothing here solves a QP, so the warning only
# alarms users: silence exactly that one message, before Avalanche is first imported.
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning, module="qpsolvers")

from fedcond.continual.benchmarks import make_benchmark  # noqa: E402  (after the filter)
from fedcond.continual.buffer import DistilledBuffer, DistillSpec  # noqa: E402  (after the filter above)
from fedcond.continual.plugin import (  # noqa: E402  (after the filter above)
    DistilledFinetunePlugin,
    DistilledMixPlugin,
    DistilledReplayPlugin,
)

__all__ = [
    "DistillSpec",
    "DistilledBuffer",
    "DistilledFinetunePlugin",
    "DistilledMixPlugin",
    "DistilledReplayPlugin",
    "make_benchmark",
]
