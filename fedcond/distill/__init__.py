"""Distillation methods behind one interface; importing this registers the built-ins."""

from fedcond.distill import coreset  # noqa: F401  (registers random, herding, kcenter)
from fedcond.distill import dc  # noqa: F401  (registers dc, dsa)
from fedcond.distill import dd  # noqa: F401  (registers dd)
from fedcond.distill import dm  # noqa: F401  (registers dm)
from fedcond.distill import dp_dm  # noqa: F401  (registers dp-dm)
from fedcond.distill import frepo  # noqa: F401  (registers frepo)
from fedcond.distill import kip  # noqa: F401  (registers kip)
from fedcond.distill import mtt  # noqa: F401  (registers mtt)
from fedcond.distill.base import DistillConfig, Distiller, get_distiller, method_names

__all__ = ["DistillConfig", "Distiller", "get_distiller", "method_names"]
