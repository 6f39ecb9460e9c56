"""Class-balanced sampling of real training images: one padded index table per run.

Shared by the matching methods (:mod:`fedcond.distill.matching`) and the privacy audit
(which replays a set's real-image start), so neither reaches into the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedcond.errors import FedcondError


@dataclass
class ClassSampler:
    """Class-balanced random real batches without replacement, for all classes at once.

    Attributes:
        classes: (R,) present class ids, ascending (CPU).
        table: (R, M) training indices per class, padded by repeating its last index.
        counts: (R,) images per class.
    """

    classes: torch.Tensor
    table: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def from_labels(cls, labels: torch.Tensor, num_classes: int, only: torch.Tensor | None = None) -> "ClassSampler":
        """Over the classes present in ``labels`` (and among ``only``, when given)."""
        labels = labels.cpu()
        counts_all = torch.bincount(labels, minlength=num_classes)
        present = counts_all > 0
        if only is not None:
            present &= torch.isin(torch.arange(counts_all.numel()), only.cpu())
        classes = torch.nonzero(present).flatten()
        if classes.numel() == 0:
            raise FedcondError("the data set has no training images to distill")
        counts = counts_all[classes]
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts_all, 0) - counts_all
        width = int(counts.max())
        col = torch.minimum(torch.arange(width).view(1, -1), (counts - 1).view(-1, 1))  # pad = repeat last
        table = order[starts[classes].view(-1, 1) + col]
        return cls(classes=classes, table=table, counts=counts)

    @property
    def num_rows(self) -> int:
        return int(self.classes.numel())

    def batch_size(self, requested: int) -> int:
        """Per-class batch width: ``requested``, capped by the largest class."""
        return min(requested, int(self.counts.max()))

    def valid(self, requested: int) -> torch.Tensor:
        """(R, B) bool (CPU): the slots that hold a real image of their class, not padding."""
        return torch.arange(self.batch_size(requested)).view(1, -1) < self.counts.view(-1, 1)

    def weights(self, requested: int, device: torch.device) -> torch.Tensor:
        """(R, B) averaging weights: 1/b_c on a class's b_c = min(B, count) real slots, 0 on padding."""
        b = self.batch_size(requested)
        valid = torch.arange(b).view(1, -1) < self.counts.view(-1, 1)
        w = valid.float() / valid.sum(dim=1, keepdim=True).float()
        return w.to(device)

    def sample(self, requested: int, generator: torch.Generator) -> torch.Tensor:
        """(R, B) training indices (CPU): a random subset per class; padded slots repeat an index."""
        b = self.batch_size(requested)
        keys = torch.rand(self.table.shape, generator=generator)
        # Padding positions get keys above 1 so they come last; the first count_c picks are distinct.
        pad = torch.arange(self.table.shape[1]).view(1, -1) >= self.counts.view(-1, 1)
        keys = keys.masked_fill(pad, 2.0)
        pick = keys.topk(b, dim=1, largest=False, sorted=True).indices
        return self.table.gather(1, pick)
