"""Pictures a person would rather look at than read: grids of synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

from fedcond.data import denormalize
from fedcond.synthetic import SyntheticSet


def save_grid(sset: SyntheticSet, path: str | os.PathLike, max_per_class: int = 10) -> Path:
    """Save a grid, one row per class (up to ``max_per_class`` images each; with one image per
    class, one row of classes), as a PNG."""
    import matplotlib  # noqa: PLC0415  (matplotlib only when a figure is drawn: seconds to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (matplotlib only when a figure is drawn: seconds to import)

    pixels = denormalize(sset.images.detach().cpu().float(), sset.mean, sset.std).clamp(0, 1)
    labels = sset.hard_labels.cpu()
    rows = [c for c in range(sset.num_classes) if bool((labels == c).any())]
    cols = max(1, min(max_per_class, max((int((labels == c).sum()) for c in rows), default=1)))
    size = 1.0 if sset.image_shape[-1] <= 16 else 1.2
    # One image per class (IPC1): classes side by side in one row instead of one tall column.
    one_row = cols == 1
    shape = (1, max(1, len(rows))) if one_row else (max(1, len(rows)), cols)
    fig, axes = plt.subplots(
        *shape,
        figsize=(shape[1] * size + (0 if one_row else 1.2), shape[0] * size + (0.4 if one_row else 0)),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    for r, c in enumerate(rows):
        imgs = pixels[labels == c][:cols]
        for j, img in enumerate(imgs):
            ax = axes[0][r] if one_row else axes[r][j]
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        if one_row:
            axes[0][r].set_title(sset.classes[c], fontsize=8)
        else:
            axes[r][0].text(
                -0.15, 0.5, sset.classes[c], transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8
            )
    fig.suptitle(f"{sset.method} · {sset.dataset} · ipc {sset.ipc} · {sset.num_images} images", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path

