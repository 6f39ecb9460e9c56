"""Distillation methods behind one interface; importing this registers the built-ins."""

from fedcond.distill import coreset  # noqa: F401  (registers random, herding, kcenter)
from fedcond.distill import dc  # noqa: F401  (registers dc, dsa)
from fedcond.distill import dm  # noqa: F401  (registers dm)
from fedcond.distill.base import DistillConfig, Distiller, get_distiller, method_names

__all__ = ["DistillConfig", "Distiller", "get_distiller", "method_names"]
