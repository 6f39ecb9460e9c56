"""The torch work of federated clients, free of Flower: distill a partition, train locally.

- FedCond clients call :func:`distill_partition`: any registered Distiller (DM by
  default) on the client's own images, or — in iterative mode — FedDM: the DM distiller
  matching class-mean embeddings under the received global model (perturbed each iteration:
  within FedDM's ball for strategy ``feddm``, by ``feddm_rho`` for ``fedcond-iterative``),
  refining the set the client made in the previous round (from fresh real images in the
  first); for strategy ``fedaf``, FedAF's collaborative condensation
  (:func:`fedcond.federated.fedaf.condense`: the same, plus the knowledge matching). With
  ``dp_epsilon`` > 0 the distiller is dp-dm (``AppConfig.client_method``): the set then
  records the client's (ε, δ).
- FedAvg / FedProx / FedAdam clients call :func:`local_train`: SGD with the comparison's
  recipe (:mod:`fedcond.recipe`, augmentation included) for a few local epochs, with
  FedProx's proximal term ``mu/2 * ||w - w_global||^2`` when ``mu > 0``.
"""

from __future__ import annotations

import torch
from torch import nn

from fedcond.data import ImageDataset
from fedcond.distill import DistillInputs, get_distiller
from fedcond.distill.base import Callbacks
from fedcond.federated.config import AppConfig
from fedcond.precision import autocast
from fedcond.recipe import Recipe
from fedcond.synthetic import SyntheticSet
from fedcond.train import classification_loss


def client_seed(cfg: AppConfig, partition_id: int, server_round: int) -> int:
    """The seed of a client's work in a round (distilling or local training): fixed by the
    run's seed, the client's partition and the round, so reruns and resumed runs draw alike."""
    return cfg.seed * 100_003 + partition_id * 1009 + server_round


def distill_partition(
    data: ImageDataset,
    cfg: AppConfig,
    seed: int,
    global_model: nn.Module | None = None,
    previous: SyntheticSet | None = None,
    knowledge: tuple[torch.Tensor, torch.Tensor] | None = None,
    callbacks: Callbacks = None,
) -> SyntheticSet:
    """Condense a client's partition (``data``'s train split) into a SyntheticSet, reporting
    the distillation's progress to ``callbacks`` (one-shot and FedDM).

    With ``global_model`` (iterative mode), FedDM: DM in that model's feature space, with
    the strategy's settings (:meth:`AppConfig.feddm_config`), starting from
    ``previous`` when the client has a set from an earlier round; for strategy ``fedaf``
    also FedAF's knowledge matching to ``knowledge`` (the server's, from round 2 on).
    """
    generator = torch.Generator().manual_seed(seed)
    if global_model is not None:
        embed_model = global_model.to(cfg.device).eval()  # the global model as it is, dropout and BN frozen
        if cfg.strategy == "fedaf":
            from fedcond.federated.fedaf import condense

            sset = condense(data, cfg.feddm_config(), generator, torch.device(cfg.device), embed_model, previous,
                            knowledge, cfg.fedaf_lambda_local)
            sset.storage_dtype = cfg.storage_dtype
            return sset
        inputs = DistillInputs(initial=previous, embed_model=embed_model)
        sset = get_distiller("dm").distill(data, cfg.feddm_config(), generator, torch.device(cfg.device), callbacks,
                                           inputs=inputs)
        sset.method = "feddm"
    else:
        distiller, config = cfg.distill_config()
        sset = distiller.distill(data, config, generator, torch.device(cfg.device), callbacks)
    sset.storage_dtype = cfg.storage_dtype
    return sset


def local_train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    proximal_mu: float = 0.0,
    precision: str = "float32",
    recipe: Recipe | None = None,
) -> float:
    """FedAvg/FedProx local update in place: SGD for ``epochs`` with the comparison's
    ``recipe`` (momentum, weight decay, the augmentation of every mini-batch; default
    :class:`fedcond.recipe.Recipe`'s); mean loss. The rate stays constant within the call:
    the rounds are FedAvg's schedule.

    The proximal anchor is a copy of the weights at entry (the received global model),
    taken before any step, as FedProx prescribes. ``precision`` (resolved, see
    :mod:`fedcond.precision`): ``bfloat16`` runs the forward pass under autocast, in
    channels-last layout on a CPU; the weights and the proximal term stay float32.
    """
    recipe = recipe or Recipe()
    augment = recipe.augmenter(images.shape[1]) if images.dim() == 4 else None
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    model.train()
    channels_last = precision == "bfloat16" and images.device.type == "cpu" and images.dim() == 4
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    n = images.shape[0]
    total, count = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx] if augment is None else augment(images[idx], generator)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(precision, images.device):
                logits = model(x)
            loss = classification_loss(logits.float(), labels[idx])
            if anchor is not None:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + 0.5 * proximal_mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return total / max(1, count)
