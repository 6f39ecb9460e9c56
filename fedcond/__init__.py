"""fedcond: federated and continual learning built on dataset distillation."""

__version__ = "0.1.0"
