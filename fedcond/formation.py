"""Multi-formation: several low-resolution images packed into one stored image.

IDC (Kim et al., ICML 2022) spends a synthetic image's pixels on ``factor**2`` smaller
images instead of one: a stored (C, H, W) image is a ``factor`` x ``factor`` mosaic of
tiles of (H / factor, W / factor) pixels, and each tile, upsampled back to (H, W), is one
training image. The bytes of a set stay those of its stored images, while a model trains
on ``factor**2`` times as many (blurrier) images: at one image per class, ten clients'
distilled images are no longer ten near-identical class means but forty smaller ones.

``decode`` is what training sees (and what the distiller differentiates through);
``encode`` builds mosaics from full-resolution images (the real images a set starts from,
or a random-real reference at the same bytes).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fedcond.errors import FedcondError


def check_factor(factor: int, image_size: tuple[int, int]) -> None:
    """Raise a FedcondError unless ``factor`` >= 1 divides both image sides."""
    if not isinstance(factor, int) or factor < 1:
        raise FedcondError(f"factor must be an integer >= 1, got {factor!r}")
    h, w = image_size
    if h % factor or w % factor:
        raise FedcondError(f"factor {factor} does not divide the image size {h}x{w}")


def decode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) mosaics -> (N * factor**2, C, H, W) training images, tile by tile
    (row-major within each mosaic), each upsampled bilinearly; differentiable."""
    if factor == 1:
        return images
    n, c, h, w = images.shape
    th, tw = h // factor, w // factor
    tiles = images.reshape(n, c, factor, th, factor, tw).permute(0, 2, 4, 1, 3, 5)
    tiles = tiles.reshape(n * factor * factor, c, th, tw)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)


def encode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N * factor**2, C, H, W) full-size images -> (N, C, H, W) mosaics of their
    area-downsampled copies, ``factor**2`` consecutive images per mosaic."""
    if factor == 1:
        return images
    m, c, h, w = images.shape
    per = factor * factor
    if m % per:
        raise FedcondError(f"{m} images do not fill mosaics of {per}")
    th, tw = h // factor, w // factor
    small = F.interpolate(images, size=(th, tw), mode="area")
    small = small.reshape(m // per, factor, factor, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    return small.reshape(m // per, c, h, w).contiguous()


def repeat_per_tile(labels: torch.Tensor, factor: int) -> torch.Tensor:
    """Labels (N,) or (N, K) of mosaics -> one row per decoded tile."""
    return labels.repeat_interleave(factor * factor, dim=0) if factor > 1 else labels
