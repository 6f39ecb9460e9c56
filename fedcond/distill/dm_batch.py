"""DM for many small data sets at once: federated clients batched on one device.

A federated client's DM run is small (a few dozen real images, a handful of synthetic
ones): on a GPU one client leaves the device idle between tiny kernels. ``DM.distill_many``
(through :func:`distill_batched` here, when :func:`batchable` accepts the settings) runs G
clients' DM loops in lockstep in one process: every iteration, the G fresh
networks (one per client, as each client would draw it) are stacked and applied with
``torch.func.vmap``, so the G real batches and the G synthetic sets are embedded in one
call each. Everything random is drawn from each client's own generator in the order its
own run draws it (initial images, network seed, real batch, DSA), so client i's set is
the set ``DM().distill(datasets[i], config, generators[i])`` gives, up to the rounding of
the stacked (grouped) convolutions. Within a call the clients' batches are padded to the
largest (zero weight): group clients of similar size.

Only what one-shot FedCond clients run: fresh random networks, hard labels, no ZCA, a
float32 real pass (precision ``float32``, or ``auto`` run as float32), no train-mode batch
norm (its batch statistics would mix the padding in), no checkpoints.
Other settings go through ``DM.distill`` one client at a time (``batchable`` says which).
Where it pays: a GPU, many clients. On a CPU a client's work is already compute-bound and
the padding costs more than the stacking saves; there the one-at-a-time path is the default.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from fedcond.augment import DSA
from fedcond.data import ImageDataset
from fedcond.distill.base import Callbacks, emit
from fedcond.distill.loop import start_run
from fedcond.distill.matching import SiameseBatches, embedding_chunk, fresh_network, has_batch_norm, syn_assignment
from fedcond.models import get_model
from fedcond.synthetic import SyntheticSet

if TYPE_CHECKING:  # dm.py imports this module
    from fedcond.distill.dm import DMConfig


def batchable(config: DMConfig, dataset: ImageDataset) -> bool:
    """Whether :func:`distill_batched` runs this config (else distill one client at a time)."""
    c, h, w = dataset.image_shape
    # torch.func.vmap ignores autocast (its batched convolutions stay float32), so a
    # bfloat16 real pass goes one client at a time; "auto" runs float32 here.
    return not (config.learn_labels or config.zca or config.checkpoint_dir or config.rho or config.factor > 1
                or config.trained_networks or config.precision not in ("auto", "float32")
                or has_batch_norm(get_model(config.model, c, dataset.num_classes, (h, w))))


class _Embed(nn.Module):
    """``model.embed`` as a module's forward (what ``functional_call`` calls)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x).flatten(1)


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(G, max n, ...) with each tensor's rows first and zeros after (differentiable)."""
    n = max(t.shape[0] for t in tensors)
    return torch.stack([F.pad(t, (0, 0) * (t.dim() - 1) + (0, n - t.shape[0])) for t in tensors])


def distill_batched(datasets: Sequence[ImageDataset], config: DMConfig, generators: Sequence[torch.Generator],
                    device: torch.device, callbacks: Callbacks = None) -> list[SyntheticSet]:
    """DM on every data set (client) at once; set i as ``DM.distill`` on ``datasets[i]``
    with ``generators[i]`` makes it (see the module docstring). All share the image shape,
    classes and ``config``, which :func:`batchable` must accept. ``callbacks`` hear the
    clients' mean loss every ``log_every`` iterations."""
    if not batchable(config, datasets[0]):
        raise ValueError("distill_batched runs fresh networks with hard labels, no ZCA, no batch norm, no checkpoints, "
                         "no rho, no trained networks, a float32 real pass: distill these clients one at a time "
                         "with DM().distill")
    config = replace(config, precision="float32")  # what runs (and is recorded)
    runs = [start_run("dm", d, config, g, device) for d, g in zip(datasets, generators)]
    device = runs[0].device
    dsa = DSA(config.dsa_strategy) if config.dsa else None
    chunk = embedding_chunk(device)
    batches = [SiameseBatches.create(r.sampler, r.syn_class, config.batch_real, dsa, device, compact=True, chunk=chunk)
               for r in runs]
    # Per client: (R, V) weights turning its drawn real images into class means, and the
    # (R, N) assignment of its synthetic images; padded to the largest client.
    real_means, syn_means = [], []
    for run, b in zip(runs, batches):
        w = run.sampler.weights(config.batch_real, device).flatten()
        if b.slots is not None:
            w = w[b.slots.index]
        real_means.append(F.one_hot(b.real_rows, run.sampler.num_rows).T.float() * w)
        syn_means.append(syn_assignment(b.syn_rows, run.sampler.num_rows, None, run.sampler.classes))
    real_w = _stack([F.pad(m, (0, max(x.shape[1] for x in real_means) - m.shape[1])) for m in real_means])
    syn_w = _stack([F.pad(m, (0, max(x.shape[1] for x in syn_means) - m.shape[1])) for m in syn_means])
    nets: list[nn.Module | None] = [None] * len(runs)

    running, count = None, 0
    for it in range(config.iterations):
        real, syn = [], []
        for i, (run, b, g) in enumerate(zip(runs, batches, generators)):
            nets[i] = fresh_network(config.model, run.dataset, g, device, reuse=nets[i]).requires_grad_(False)
            r, s = b.draw(run.dataset.train_images, run.state.images, g)
            real.append(r)
            syn.append(s)
        params, buffers = stack_module_state([_Embed(n) for n in nets])
        base = _Embed(nets[0])

        def embed(p: dict, bufs: dict, x: torch.Tensor, base: nn.Module = base) -> torch.Tensor:
            return functional_call(base, (p, bufs), (x,))

        with torch.no_grad():
            real_feat = vmap(embed)(params, buffers, _stack(real))
        real_mean = torch.einsum("grv,gvd->grd", real_w, real_feat)
        syn_mean = torch.einsum("grn,gnd->grd", syn_w, vmap(embed)(params, buffers, _stack(syn)))
        loss = ((real_mean - syn_mean) ** 2).sum()  # the sum of the clients' own losses
        for run in runs:
            run.state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for run in runs:
            run.state.optimizer.step()
        running = loss.detach() if running is None else running + loss.detach()
        count += 1
        done = it + 1
        if done % config.log_every == 0 or done == config.iterations:  # as run_loop logs, per client
            emit(callbacks, done, config.iterations, {"loss": float(running) / (count * len(runs))})
            running, count = None, 0
    return [run.snapshot() for run in runs]
