"""Distillation methods behind one interface.

Every method is a :class:`Distiller` with one entry point, ``distill(dataset, config,
generator, device=None, callbacks=None, inputs=None) -> SyntheticSet``; what only some
methods take (a set to refine, a server's model) travels in :class:`DistillInputs`, and a
method refuses any input its ``accepts`` does not list. A method's module is imported the
first time the method is asked for (:func:`get_distiller`, :func:`make_distiller`), so
naming one method — a federated config checks its method — does not import them all.

A new method is one file and one line. The smallest, a random coreset (the built-in
``random`` in coreset.py also makes mosaics)::

    # fedcond/distill/my_random.py
    import torch

    from fedcond.distill.base import DistillConfig, Distiller, generator_seed, make_set, register


    @register("my-random")
    class MyRandom(Distiller):
        config_class = DistillConfig  # its options: the fields of a DistillConfig subclass

        def _distill(self, dataset, config, generator, device, callbacks, inputs):
            dataset = dataset.to(device)
            idx = torch.cat([i[torch.randperm(i.numel(), generator=generator)[: config.ipc].to(i.device)]
                             for i in dataset.class_indices() if i.numel() > 0])
            return make_set(dataset, dataset.train_images[idx], dataset.train_labels[idx], self.name, config,
                            generator_seed(generator))

and the line ``"my-random": "my_random"`` in ``base.BUILTIN_METHODS``. An iterative method
subclasses :class:`~fedcond.distill.loop.IterativeDistiller` and writes only ``prepare``
(its step; see dd.py); tests/test_method_contract.py then checks it like every method.
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
