"""DSA: differentiable siamese augmentation (Zhao & Bilen, ICML 2021).

Dataset condensation matches real and synthetic batches *through* an augmentation, so the
augmentation must be differentiable w.r.t. the images and "siamese": the same sampled
transform applied to the real batch and to the synthetic batch of a class. Hence the split
``sample_params`` (draw, on the CPU, from an explicit generator) / ``apply`` (a pure
function of images and parameters, vectorised over the batch).

Families of the paper's default strategy ``color_crop_cutout_flip_scale_rotate`` and their
default ranges: colour (brightness +U(-0.5, 0.5)*1.0, saturation U(0, 2), contrast
U(0.5, 1.5)), crop (integer translation up to 12.5% of the side, zero fill), cutout (a
zeroed square of half the side), flip (p = 0.5), scale (U(1/1.2, 1.2) per axis), rotate
(U(-15, 15) degrees). As in the reference's default single mode, each draw picks ONE family
uniformly and applies only it; ``mode="multiple"`` applies every family in turn instead.

A parameter row is one such draw. Rows broadcast: one row applies to a whole batch (the
reference's siamese mode), N rows to N images; ``DSAParams.take`` expands per-class draws
to per-image rows, which is how DM/DC augment all classes in one batched call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch.nn import functional as F

from fedcond.errors import FedcondError

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """Sampled transform parameters, one row per draw (all tensors of shape (n,)).

    Rows whose family was not chosen hold identity values, so ``apply`` can run every
    family on every row without branching per image. ``active`` names the families that
    are non-identity in at least one row (known on the CPU at sampling time), so ``apply``
    skips the rest without a device synchronisation.
    """

    brightness: torch.Tensor  # added offset
    saturation: torch.Tensor  # factor around the per-pixel channel mean
    contrast: torch.Tensor  # factor around the per-image mean
    crop_u: torch.Tensor  # (n, 2) uniforms -> integer translation (rows, cols)
    cutout_u: torch.Tensor  # (n, 2) uniforms -> cutout centre (rows, cols)
    cutout_on: torch.Tensor  # bool
    flip: torch.Tensor  # bool
    scale: torch.Tensor  # (n, 2) factors (x, y)
    rotate: torch.Tensor  # radians
    active: frozenset[str]

    def __len__(self) -> int:
        return int(self.brightness.shape[0])

    def _map(self, fn) -> "DSAParams":
        values = {f.name: fn(getattr(self, f.name)) for f in fields(self) if f.name != "active"}
        return DSAParams(**values, active=self.active)

    def take(self, index: torch.Tensor) -> "DSAParams":
        """Rows ``index`` (e.g. the class id of every image: per-class draws -> per-image)."""
        index = index.to(self.brightness.device)
        return self._map(lambda t: t[index])

    def to(self, device: str | torch.device) -> "DSAParams":
        """On ``device``; from the CPU to CUDA via pinned memory, so the host does not wait."""
        device = torch.device(device)
        if self.brightness.device == device:
            return self
        if device.type == "cuda" and self.brightness.device.type == "cpu":
            return self._map(lambda t: t.pin_memory().to(device, non_blocking=True))
        return self._map(lambda t: t.to(device))


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Family names of a strategy string like ``color_crop_flip``; raises on unknown names."""
    names = tuple(s for s in strategy.lower().split("_") if s)
    unknown = [s for s in names if s not in FAMILIES]
    if unknown or not names:
        raise FedcondError(f"unknown DSA strategy {strategy!r}: use '_'-joined names from {', '.join(FAMILIES)}")
    return names


class DSA:
    """Differentiable siamese augmentation with the paper's default parameters.

    ``DSA()(images, generator)`` augments each image with its own draw (training on a
    synthetic set, the ``Augment`` protocol of ``fedcond.train``). For matching, draw once
    with :meth:`sample_params` and :meth:`apply` the same draw to real and synthetic images.
    """

    def __init__(
        self,
        strategy: str = DEFAULT_STRATEGY,
        mode: str = "single",
        ratio_scale: float = 1.2,
        ratio_rotate: float = 15.0,
        ratio_crop_pad: float = 0.125,
        ratio_cutout: float = 0.5,
        brightness: float = 1.0,
        saturation: float = 2.0,
        contrast: float = 0.5,
        prob_flip: float = 0.5,
    ) -> None:
        if mode not in ("single", "multiple"):
            raise FedcondError(f"DSA mode must be 'single' or 'multiple', got {mode!r}")
        self.families = parse_strategy(strategy)
        self.mode = mode
        self.ratio_scale, self.ratio_rotate = ratio_scale, ratio_rotate
        self.ratio_crop_pad, self.ratio_cutout = ratio_crop_pad, ratio_cutout
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast
        self.prob_flip = prob_flip

    def sample_params(self, n: int, generator: torch.Generator) -> DSAParams:
        """Draw ``n`` independent parameter rows on the CPU from ``generator``.

        Every value is drawn whatever the chosen family, in a fixed order, so the stream of
        random numbers consumed depends only on ``n``.
        """
        g = generator
        u = lambda *shape: torch.rand(*shape, generator=g)
        r = self.ratio_scale
        raw = {
            "brightness": (u(n) - 0.5) * self.brightness,
            "saturation": u(n) * self.saturation,
            "contrast": u(n) + self.contrast,
            "crop_u": u(n, 2),
            "cutout_u": u(n, 2),
            "flip": u(n) < self.prob_flip,
            "scale": u(n, 2) * (r - 1.0 / r) + 1.0 / r,
            "rotate": (u(n) - 0.5) * 2 * self.ratio_rotate / 180 * math.pi,
        }
        if self.mode == "single":
            pick = torch.randint(0, len(self.families), (n,), generator=g)
            chosen = {f: pick == i for i, f in enumerate(self.families)}
        else:
            chosen = {f: torch.ones(n, dtype=torch.bool) for f in self.families}
        off = torch.zeros(n, dtype=torch.bool)
        on = {f: chosen.get(f, off) for f in FAMILIES}
        col = on["color"]
        return DSAParams(
            brightness=torch.where(col, raw["brightness"], 0.0),
            saturation=torch.where(col, raw["saturation"], 1.0),
            contrast=torch.where(col, raw["contrast"], 1.0),
            crop_u=torch.where(on["crop"][:, None], raw["crop_u"], -1.0),  # < 0: no shift
            cutout_u=raw["cutout_u"],
            cutout_on=on["cutout"],
            flip=raw["flip"] & on["flip"],
            scale=torch.where(on["scale"][:, None], raw["scale"], 1.0),
            rotate=torch.where(on["rotate"], raw["rotate"], 0.0),
            active=frozenset(f for f in FAMILIES if bool(on[f].any())),  # CPU tensors: no device sync
        )

    def apply(self, x: torch.Tensor, params: DSAParams) -> torch.Tensor:
        """Augment ``x`` (N, C, H, W) with ``params`` (1 row, broadcast, or N rows); differentiable."""
        n, _, h, w = x.shape
        if len(params) not in (1, n):
            raise ValueError(f"{len(params)} parameter rows for a batch of {n} images")
        p = params.to(x.device)
        col = lambda t: t.to(x.dtype).view(-1, 1, 1, 1)
        if "color" in p.active:
            x = x + col(p.brightness)
            m = x.mean(dim=1, keepdim=True)
            x = (x - m) * col(p.saturation) + m
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - m) * col(p.contrast) + m
        if "crop" in p.active:
            x = _translate(x, p.crop_u, self.ratio_crop_pad)
        if "cutout" in p.active:
            x = x * _cutout_mask(p.cutout_u, p.cutout_on, h, w, self.ratio_cutout, x.dtype)
        if "flip" in p.active:
            x = torch.where(p.flip.view(-1, 1, 1, 1), x.flip(3), x)
        if "scale" in p.active or "rotate" in p.active:
            x = _scale_rotate(x, p.scale, p.rotate)
        return x

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Per-image draws (not siamese): the augmentation used while training on a set."""
        return self.apply(images, self.sample_params(images.shape[0], generator))


def _translate(x: torch.Tensor, crop_u: torch.Tensor, ratio: float) -> torch.Tensor:
    """Integer shift by up to ``ratio`` of each side, zero fill (the reference's pad-and-crop)."""
    n, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # u < 0 marks "no shift"; otherwise floor(u * (2s + 1)) - s is uniform on [-s, s].
    ty = torch.where(crop_u[:, 0] < 0, 0, (crop_u[:, 0] * (2 * sh + 1)).long().clamp(max=2 * sh) - sh)
    tx = torch.where(crop_u[:, 1] < 0, 0, (crop_u[:, 1] * (2 * sw + 1)).long().clamp(max=2 * sw) - sw)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + ty.view(-1, 1, 1) + 1
    cols = torch.arange(w, device=x.device).view(1, 1, w) + tx.view(-1, 1, 1) + 1
    # One zero border, indices clamped onto it: everything shifted in from outside is zero.
    index = rows.clamp(0, h + 1) * (w + 2) + cols.clamp(0, w + 1)  # (n or 1, h, w)
    padded = F.pad(x, (1, 1, 1, 1)).flatten(2)  # (N, C, (h+2)(w+2))
    index = index.flatten(1).unsqueeze(1).expand(n, c, h * w)
    return padded.gather(2, index).view(n, c, h, w)


def _cutout_mask(
    cut_u: torch.Tensor, on: torch.Tensor, h: int, w: int, ratio: float, dtype: torch.dtype
) -> torch.Tensor:
    """(n, 1, h, w) mask zeroing a square of ``ratio`` of the side around a random centre."""
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # Centre uniform on [0, side + (1 - size % 2)), as in the reference; the square is clipped at the border.
    cy = (cut_u[:, 0] * (h + 1 - ch % 2)).long()
    cx = (cut_u[:, 1] * (w + 1 - cw % 2)).long()
    y0, x0 = cy - ch // 2, cx - cw // 2
    rows = torch.arange(h, device=cut_u.device).view(1, h, 1)
    cols = torch.arange(w, device=cut_u.device).view(1, 1, w)
    inside = (rows >= y0.view(-1, 1, 1)) & (rows < (y0 + ch).view(-1, 1, 1))
    inside = inside & (cols >= x0.view(-1, 1, 1)) & (cols < (x0 + cw).view(-1, 1, 1))
    return (~(inside & on.view(-1, 1, 1))).to(dtype).unsqueeze(1)


def _scale_rotate(x: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Scale then rotate as ONE affine resampling (bilinear, zero padding, align_corners)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    # Output pixel p samples the input at S @ R @ p: the reference's scale pass followed by
    # its rotate pass, composed into one resampling (one interpolation instead of two).
    theta = torch.stack(
        [
            torch.stack([scale[:, 0] * cos, -scale[:, 0] * sin, zero], dim=1),
            torch.stack([scale[:, 1] * sin, scale[:, 1] * cos, zero], dim=1),
        ],
        dim=1,
    ).to(x.dtype)
    if theta.shape[0] == 1 and x.shape[0] > 1:
        theta = theta.expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
