"""Distillation methods behind one interface.

A method's module is imported the first time the method is asked for (:func:`get_distiller`,
:func:`make_distiller`; the table of built-in methods is ``base.BUILTIN_METHODS``), so
naming one method — a federated config checks its method — does not import them all.
"""

from fedcond.distill.base import (
    Callback,
    DistillConfig,
    Distiller,
    DistillInputs,
    get_distiller,
    make_distiller,
    method_names,
    register,
)

__all__ = ["Callback", "DistillConfig", "DistillInputs", "Distiller", "get_distiller", "make_distiller",
           "method_names", "register"]
