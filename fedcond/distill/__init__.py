"""Distillation methods behind one interface; importing this registers the built-ins."""

from fedcond.distill import (
    coreset,  # noqa: F401  (registers random, herding, kcenter)
    dc,  # noqa: F401  (registers dc, dsa)
    dd,  # noqa: F401  (registers dd)
    dm,  # noqa: F401  (registers dm)
    dp_dm,  # noqa: F401  (registers dp-dm)
    frepo,  # noqa: F401  (registers frepo)
    kip,  # noqa: F401  (registers kip)
    mtt,  # noqa: F401  (registers mtt)
)
from fedcond.distill.base import Callback, DistillConfig, Distiller, get_distiller, make_distiller, method_names

__all__ = ["Callback", "DistillConfig", "Distiller", "get_distiller", "make_distiller", "method_names"]
