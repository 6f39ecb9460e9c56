"""Memorisation: how close each synthetic image is to a training image, and near-copies.

Distances are root-mean-square pixel differences between images in [0, 1] pixel space
(denormalised and clamped, i.e. as a person sees them; 0 = identical, 1 = black vs white
everywhere), so the number is comparable across image sizes and data sets.

A synthetic image is a *near-copy* when it is closer to its nearest training image than
unseen images usually are to theirs: the threshold is the ``quantile`` (default 1 %) of the
distances from held-out (test) images to their nearest training image. An image that was
never derived from a training image is therefore flagged with probability about
``quantile`` — the share to expect from a set that copies nothing; a set of real training
images is flagged entirely (distance 0).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from fedcond.data import denormalize


def pixels(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(N, C*H*W) float32 pixels in [0, 1]: denormalised, clamped and flattened."""
    return denormalize(images.detach().float().cpu(), mean, std).clamp(0, 1).flatten(1)


def nearest(queries: torch.Tensor, reference: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``queries`` (N, D): the RMS distance to the nearest row of
    ``reference`` (M, D) and that row's index. ``reference`` is read ``chunk`` rows at a time
    so the (N, chunk) distance matrix stays small."""
    if reference.shape[0] == 0:
        raise ValueError("empty reference set")
    best = torch.full((queries.shape[0],), math.inf)
    index = torch.zeros(queries.shape[0], dtype=torch.long)
    for start in range(0, reference.shape[0], chunk):
        d = torch.cdist(queries, reference[start : start + chunk])
        value, arg = d.min(dim=1)
        better = value < best
        best = torch.where(better, value, best)
        index = torch.where(better, arg + start, index)
    return best / math.sqrt(queries.shape[1]), index


@dataclass
class Memorisation:
    """Nearest-neighbour distances of a synthetic set and its near-copies.

    Attributes:
        distance_to_train, distance_to_test: (N,) RMS distance of each synthetic image to
            its nearest training / held-out image.
        nearest_train: (N,) index of that training image.
        threshold: near-copy threshold (the ``quantile`` of unseen images' distances).
        quantile: the share of unseen images below the threshold (what a set copying
            nothing would show).
        reference_size: how many held-out images the threshold was computed from.
    """

    distance_to_train: torch.Tensor
    distance_to_test: torch.Tensor
    nearest_train: torch.Tensor
    threshold: float
    quantile: float
    reference_size: int

    @property
    def near_copies(self) -> torch.Tensor:
        """(N,) bool: which synthetic images are near-copies."""
        return self.distance_to_train <= self.threshold

    @property
    def near_copy_share(self) -> float:
        return float(self.near_copies.float().mean()) if self.near_copies.numel() else 0.0

    def significant(self) -> bool:
        """Whether there are clearly more near-copies than a set copying nothing would show
        (more than the binomial expectation plus three standard deviations, plus one)."""
        n = self.near_copies.numel()
        expected = self.quantile * n
        return int(self.near_copies.sum()) > expected + 3 * math.sqrt(expected * (1 - self.quantile)) + 1

    def to_json(self) -> dict:
        return {
            "near_copy_share": self.near_copy_share,
            "near_copy_count": int(self.near_copies.sum()),
            "num_synthetic": int(self.near_copies.numel()),
            "near_copy_threshold": self.threshold,
            "near_copy_share_expected_for_unseen_images": self.quantile,
            "near_copies_significant": self.significant(),
            "threshold_reference_images": self.reference_size,
            "median_distance_to_train": float(self.distance_to_train.median()),
            "median_distance_to_test": float(self.distance_to_test.median()),
            "distance_unit": "RMS pixel difference in [0, 1] pixel space",
            "distance_to_train": [round(float(v), 5) for v in self.distance_to_train],
            "distance_to_test": [round(float(v), 5) for v in self.distance_to_test],
            "nearest_train_index": self.nearest_train.tolist(),
        }


def memorisation(syn: torch.Tensor, train: torch.Tensor, test: torch.Tensor, quantile: float = 0.01,
                 reference_size: int = 1000, generator: torch.Generator | None = None) -> Memorisation:
    """Distances of synthetic pixels ``syn`` to ``train`` and ``test`` pixels (all (N, D) in
    [0, 1], see :func:`pixels`) and the near-copy threshold from up to ``reference_size``
    random test images' distances to ``train``."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    d_train, idx = nearest(syn, train)
    d_test, _ = nearest(syn, test)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    pick = torch.randperm(test.shape[0], generator=gen)[:reference_size]
    null, _ = nearest(test[pick], train)
    threshold = float(torch.quantile(null, quantile))
    return Memorisation(d_train, d_test, idx, threshold, quantile, int(pick.numel()))


def save_pairs(syn: torch.Tensor, train: torch.Tensor, result: Memorisation, image_shape: tuple[int, int, int],
               path: str | os.PathLike, count: int = 10) -> Path:
    """A PNG of the ``count`` synthetic images closest to a training image (top row) above
    that training image (bottom row), each pair titled with its distance; near-copies in red.

    ``syn``/``train`` are pixels as given to :func:`memorisation`.
    """
    import matplotlib  # noqa: PLC0415  (matplotlib only when a figure is drawn: seconds to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (matplotlib only when a figure is drawn: seconds to import)

    order = torch.argsort(result.distance_to_train)[:count].tolist()
    cols = max(1, len(order))
    fig, axes = plt.subplots(2, cols, figsize=(cols * 1.1 + 0.8, 2.6), squeeze=False)
    c, h, w = image_shape

    def show(ax, flat: torch.Tensor) -> None:
        img = flat.view(c, h, w)
        if c == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    for j, i in enumerate(order):
        show(axes[0][j], syn[i])
        show(axes[1][j], train[int(result.nearest_train[i])])
        copy = bool(result.near_copies[i])
        axes[0][j].set_title(f"{float(result.distance_to_train[i]):.3f}", fontsize=7, color="red" if copy else "black")
    axes[0][0].set_ylabel("synthetic", fontsize=8)
    axes[1][0].set_ylabel("nearest\ntraining", fontsize=8)
    fig.suptitle(f"closest synthetic/training pairs (RMS distance; near-copy <= {result.threshold:.3f}, in red)",
                 fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
