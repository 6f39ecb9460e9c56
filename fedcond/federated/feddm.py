"""FedDM-style refinement: match class-mean embeddings under the received global model.

In iterative FedCond, round r's clients receive the global model trained on round r-1's
pooled sets and move their own synthetic images so that, class by class, their mean
``model.embed`` matches that of their real images (Xiong et al., FedDM, CVPR 2023 — the
DM objective with the global model as the embedding network). Small Gaussian weight
perturbations (``rho``) each iteration keep the images from over-fitting one network.

The loss is DM's own pure function (``fedcond.distill.dm.dm_loss``) with the global model
as the embedding network; this module adds only what DM's loop lacks for FedDM: starting
from the client's previous-round set instead of fresh real images.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedcond.data import ImageDataset
from fedcond.federated.config import FederateConfig
from fedcond.synthetic import SyntheticSet


def _class_batches(
    real_idx: list[torch.Tensor], batch_real: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """DM's batch layout: (R * B) indices, B per class row (padded by repetition), and
    (R, B) averaging weights (1/b_c on a class's b_c real slots, 0 on padding)."""
    width = min(batch_real, max(int(i.numel()) for i in real_idx))
    picks, weights = [], torch.zeros(len(real_idx), width)
    for r, idx in enumerate(real_idx):
        pick = idx[torch.randperm(idx.numel(), generator=generator)[:width]]
        weights[r, : pick.numel()] = 1.0 / pick.numel()
        picks.append(torch.cat([pick, pick[-1:].repeat(width - pick.numel())]))
    return torch.cat(picks), weights


def _perturbed(model: nn.Module, rho: float, generator: torch.Generator) -> nn.Module:
    if rho <= 0:
        return model
    net = copy.deepcopy(model)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * rho * p.abs().mean())
    return net


def refine_against_model(
    data: ImageDataset,
    start: SyntheticSet,
    model: nn.Module,
    cfg: FederateConfig,
    generator: torch.Generator,
) -> SyntheticSet:
    """Optimise ``start``'s images to match ``data``'s class-mean embeddings under ``model``.

    Settings from ``cfg``: ``feddm_lr_images``, ``feddm_momentum_images``,
    ``feddm_batch_real`` and ``feddm_rho`` (relative weight perturbation).
    """
    lr, momentum = cfg.feddm_lr_images, cfg.feddm_momentum_images
    batch_real, rho = cfg.feddm_batch_real, cfg.feddm_rho
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    labels = start.hard_labels.clone()
    images = start.images.detach().clone().float().requires_grad_(True)
    opt = torch.optim.SGD([images], lr=lr, momentum=momentum)
    from fedcond.distill.dm import dm_loss  # noqa: PLC0415

    present = [c for c in labels.unique().tolist() if bool((data.train_labels == c).any())]
    real_idx = [torch.nonzero(data.train_labels == c).flatten() for c in present]
    # (R, N) synthetic averaging weights; images of classes absent locally get weight 0.
    syn_weights = torch.stack([(labels == c).float() / (labels == c).sum() for c in present])
    for _ in range(cfg.iterations):
        net = _perturbed(model, rho, generator)
        idx, real_weights = _class_batches(real_idx, batch_real, generator)
        loss = dm_loss(net.embed, data.train_images[idx], real_weights, images, syn_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    out = copy.copy(start)
    out.images = images.detach().cpu().contiguous()
    out.labels = labels
    out.method = "feddm"
    return out.validate()
