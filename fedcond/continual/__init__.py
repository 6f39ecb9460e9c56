"""Continual learning with a distilled replay buffer, as Avalanche parts.

- :mod:`~fedcond.continual.budget`      per-class quotas and sub-selection (pure rules)
- :mod:`~fedcond.continual.experience`  an Avalanche experience -> tensors / ImageDataset
- :mod:`~fedcond.continual.buffer`      ``DistilledBuffer`` storage policy (``ExemplarsBuffer``)
- :mod:`~fedcond.continual.plugin`      ``DistilledReplayPlugin`` (a ``ReplayPlugin``)
- :mod:`~fedcond.continual.benchmarks`  split-digits / SplitMNIST / SplitFashionMNIST / SplitCIFAR-10
- :mod:`~fedcond.continual.strategies`  the compared Avalanche templates
- :mod:`~fedcond.continual.runner`      strategies x memories x seeds with EvaluationPlugin
- :mod:`~fedcond.continual.report`      results.json and plots

Importing this package imports Avalanche; the core of fedcond never does.
"""

from fedcond.continual.benchmarks import make_benchmark
from fedcond.continual.buffer import DistilledBuffer, DistillSpec
from fedcond.continual.plugin import DistilledReplayPlugin

__all__ = ["DistillSpec", "DistilledBuffer", "DistilledReplayPlugin", "make_benchmark"]
