"""FedAF's torch work, free of Flower: the clients' collaborative condensation, the server's distillation.

FedAF (Wang et al., CVPR 2024, "An Aggregation-Free Federated Learning for Tackling Data
Heterogeneity") never averages models. Each round:

1. the server sends the global model and the **global knowledge**: per class, the mean logits
   of the global model on the clients' real images of that class (aggregated from what the
   clients uploaded in the previous round; none in the first);
2. each client condenses its data with DM in the received model's feature space (FedDM's
   ball of networks around it, :meth:`fedcond.federated.config.FederateConfig.feddm_config`),
   refining its previous round's set, plus ``lambda_local`` times the **local-global knowledge
   matching** term (:func:`knowledge_loss`): the class-mean logits of its synthetic images
   pulled towards the global knowledge (collaborative data condensation, :func:`condense`);
3. it uploads the condensed images with their hard labels and its **soft labels**: the
   received model's class-mean logits on its real images, with the count of each class
   (:func:`class_mean_logits`);
4. the server trains the global model, continuing from the current one, on the union of the
   current condensed sets with cross-entropy on the hard labels plus ``lambda_global`` times
   the symmetric KL divergence between the model's class-wise soft labels on the condensed
   images and the clients' (:func:`distillation_loss`); the clients' soft labels, aggregated
   (:func:`aggregate_knowledge`), are the next round's global knowledge.

Departures from the paper are listed in docs/federated.md ("FedDM and FedAF").
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fedcond.data import ImageDataset
from fedcond.distill import DistillInputs
from fedcond.distill.dm import DM, DMStep
from fedcond.distill.loop import RunSetup, Step
from fedcond.federated.records import KNOWLEDGE_KEY, SOFT_LABELS_KEY  # the records FedAF adds to messages
from fedcond.synthetic import SyntheticSet

__all__ = ["KNOWLEDGE_KEY", "SOFT_LABELS_KEY", "aggregate_knowledge", "class_mean_logits", "condense",
           "distillation_loss", "knowledge_loss", "server_loss"]


@torch.no_grad()
def class_mean_logits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mean logits per class on ``images`` ((C, C) float32, zero rows for absent
    classes) and the count of each class ((C,) int64)."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(num_classes, num_classes)
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start : start + batch_size]).float().cpu()
        sums.index_add_(0, labels[start : start + batch_size].cpu(), logits)
    model.train(was_training)
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    return sums / counts.clamp_min(1).unsqueeze(1).float(), counts


def aggregate_knowledge(stats: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the count-weighted mean of the clients' class-mean logits, and the classes
    some client holds ((C, C) float32, (K,) int64 ascending)."""
    logits = torch.stack([s[0].float() for s in stats])  # (clients, C, C)
    counts = torch.stack([s[1].float() for s in stats])  # (clients, C)
    total = counts.sum(0)
    mean = (logits * counts.unsqueeze(2)).sum(0) / total.clamp_min(1).unsqueeze(1)
    return mean, (total > 0).nonzero().flatten()


def knowledge_loss(logits: torch.Tensor, weights: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Local-global knowledge matching: ``sum_c ||mean_c logits - target_c||^2``, ``weights``
    (R, N) averaging the N synthetic images' logits into R class means, ``targets`` (R, C)."""
    return ((weights @ logits.float() - targets) ** 2).sum()


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, known: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """The server's term: for each class of the batch with clients' soft labels, the symmetric
    KL divergence between the model's class-averaged soft labels ``mean softmax(logits / T)``
    and the clients' ``softmax(target / T)``, averaged over those classes (0 when none).

    ``targets``: (C, C) aggregated class-mean logits; ``known``: (C,) bool, classes they cover.
    """
    if labels.dim() != 1:
        raise ValueError("FedAF's distillation term needs hard labels")
    present = torch.unique(labels)
    present = present[known.to(labels.device)[present]]
    if present.numel() == 0:
        return logits.sum() * 0.0
    onehot = (labels.unsqueeze(0) == present.unsqueeze(1)).float()  # (P, B)
    model_probs = (onehot / onehot.sum(1, keepdim=True)) @ F.softmax(logits / temperature, dim=1)
    client_probs = F.softmax(targets.to(logits.device)[present] / temperature, dim=1)
    log_m, log_c = model_probs.clamp_min(1e-8).log(), client_probs.clamp_min(1e-8).log()
    kl_cm = (client_probs * (log_c - log_m)).sum(1)
    kl_mc = (model_probs * (log_m - log_c)).sum(1)
    return ((kl_cm + kl_mc) / 2).mean()


def server_loss(knowledge: tuple[torch.Tensor, torch.Tensor] | None, num_classes: int, weight: float,
                temperature: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The extra term of the server's training (``train_on_pool``'s ``extra_loss``), or None."""
    if knowledge is None or weight == 0:
        return None
    targets, classes = knowledge
    known = torch.zeros(num_classes, dtype=torch.bool)
    known[classes] = True
    return lambda logits, labels: weight * distillation_loss(logits, labels, targets, known, temperature)


class _KnowledgeStep(DMStep):
    """DM's iteration plus FedAF's knowledge matching of the synthetic images' class-mean logits."""

    def __init__(self, run: RunSetup, generator: torch.Generator, knowledge: tuple[torch.Tensor, torch.Tensor],
                 weight: float) -> None:
        super().__init__(run, generator)
        targets, classes = knowledge
        mine = [c for c in run.sampler.classes.tolist() if c in set(classes.tolist())]
        rows = (self.syn_class.unsqueeze(0) == torch.tensor(mine, device=self.syn_class.device).unsqueeze(1)).float()
        self.weights = rows / rows.sum(1, keepdim=True).clamp_min(1)  # (R, N tiles)
        self.targets = targets.float()[mine].to(self.syn_class.device)
        self.weight = weight if mine else 0.0

    def regulariser(self, net: nn.Module, tiles: torch.Tensor) -> torch.Tensor | None:
        if self.weight == 0:
            return None
        return self.weight * knowledge_loss(net(tiles), self.weights, self.targets)


class _CollaborativeDM(DM):
    """DM whose iterations add :class:`_KnowledgeStep`'s term (not registered: FedAF's clients
    build it with the round's knowledge)."""

    def __init__(self, knowledge: tuple[torch.Tensor, torch.Tensor], weight: float) -> None:
        self.knowledge, self.weight = knowledge, weight

    def prepare(self, run: RunSetup, generator: torch.Generator, callbacks) -> Step:
        return _KnowledgeStep(run, generator, self.knowledge, self.weight)


def condense(data: ImageDataset, config, generator: torch.Generator, device: torch.device, global_model: nn.Module,
             previous: SyntheticSet | None, knowledge: tuple[torch.Tensor, torch.Tensor] | None,
             weight: float) -> SyntheticSet:
    """A FedAF client's collaborative condensation: DM (``config``, a DMConfig) in
    ``global_model``'s features, from ``previous`` when given, plus ``weight`` times the
    knowledge matching when the server sent ``knowledge`` (logits (C, C), classes (K,))."""
    from fedcond.distill import get_distiller

    inputs = DistillInputs(initial=previous, embed_model=global_model)
    distiller = _CollaborativeDM(knowledge, weight) if knowledge is not None and weight > 0 else get_distiller("dm")
    sset = distiller.distill(data, config, generator, device, inputs=inputs)
    sset.method = "fedaf"
    return sset
