"""Loss-based membership inference (Yeom et al. 2018): was this image in the training data?

A model fits the images it was trained on (or, through a synthetic set, the images the set
was made from) better than images it never saw, so the attacker scores every candidate by
minus its loss and calls the high scorers members. How well that separates members from
held-out non-members is the leakage:

- ROC AUC: 0.5 = the attacker cannot tell them apart, 1.0 = perfectly;
- TPR at 1 % FPR (Carlini et al. 2022): the share of members caught while wrongly
  accusing only 1 % of non-members — what matters for the few most exposed images, which
  an average like the AUC hides.

The ROC computations are scikit-learn's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def example_losses(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """(N,) cross-entropy of ``model`` on each (image, hard label), in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    out = [F.cross_entropy(model(images[i : i + batch_size]), labels[i : i + batch_size], reduction="none").cpu()
           for i in range(0, images.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def roc_auc(member_scores: torch.Tensor, nonmember_scores: torch.Tensor) -> float:
    """ROC AUC of telling members (higher scores) from non-members."""
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415  (scikit-learn only for this score)

    y, s = _stack(member_scores, nonmember_scores)
    return float(roc_auc_score(y, s))


def tpr_at_fpr(member_scores: torch.Tensor, nonmember_scores: torch.Tensor, fpr: float = 0.01) -> float:
    """The largest true-positive rate whose false-positive rate is at most ``fpr``."""
    from sklearn.metrics import roc_curve  # noqa: PLC0415  (scikit-learn only for this score)

    y, s = _stack(member_scores, nonmember_scores)
    fprs, tprs, _ = roc_curve(y, s)
    return float(tprs[fprs <= fpr].max())


def _stack(members: torch.Tensor, nonmembers: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    if members.numel() == 0 or nonmembers.numel() == 0:
        raise ValueError("membership metrics need at least one member and one non-member")
    y = np.concatenate([np.ones(members.numel()), np.zeros(nonmembers.numel())])
    s = torch.cat([members.flatten(), nonmembers.flatten()]).double().numpy()
    return y, s


@dataclass
class AttackResult:
    """The loss attack on R models: per-model AUC and TPR at 1 % FPR, and their means."""

    aucs: list[float]
    tprs: list[float]
    num_members: int
    num_nonmembers: int

    @property
    def auc(self) -> float:
        return float(np.mean(self.aucs))

    @property
    def tpr_at_1pct_fpr(self) -> float:
        return float(np.mean(self.tprs))

    def to_json(self) -> dict:
        return {"auc": self.auc, "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr, "auc_per_model": self.aucs,
                "tpr_at_1pct_fpr_per_model": self.tprs, "num_members": self.num_members,
                "num_nonmembers": self.num_nonmembers}


def loss_attack(models: list[nn.Module], members: tuple[torch.Tensor, torch.Tensor],
                nonmembers: tuple[torch.Tensor, torch.Tensor]) -> AttackResult:
    """Attack each model with score = -loss; ``members``/``nonmembers`` are (images, labels)."""
    aucs, tprs = [], []
    for model in models:
        m = -example_losses(model, *members)
        n = -example_losses(model, *nonmembers)
        aucs.append(roc_auc(m, n))
        tprs.append(tpr_at_fpr(m, n, 0.01))
    return AttackResult(aucs, tprs, int(members[1].numel()), int(nonmembers[1].numel()))
