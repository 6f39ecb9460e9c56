"""Shared parts of the matching methods (DM, DC/DSA): real batches, synthetic start, labels.

Everything here is set up once per run, so the per-iteration hot path is a handful of
vectorised tensor ops: real indices for all classes come from one ``topk`` over random
keys of a padded per-class index table, drawn on the CPU from the run's generator and
moved to the device in one small copy (pinned, asynchronous on CUDA).

Only the classes present in the data take part (a federated client or a continual
experience may hold a few), each with ``min(ipc, images of that class)`` synthetic images.
Rows ("class rows") index the present classes; ``classes[row]`` is the class id.

A class-balanced batch is a padded (R, B) table: a class with fewer than B images repeats
its last index with weight 0. For a small, skewed partition that is mostly padding (41
images in 7 classes, the largest holding 21, fill 147 slots). Methods whose per-image
work does not see the other images of its batch (DM without train-mode batch norm) draw a
*compact* batch instead (:class:`RealSlots`): the same random draw, only the real slots
embedded, their features put back where the padded layout had them — the same numbers,
without the padded work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fedcond.augment import DSA
from fedcond.data import ImageDataset
from fedcond.errors import FedcondError
from fedcond.models import get_model
from fedcond.sampling import ClassSampler


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small CPU tensor to ``device`` without stalling the host on CUDA."""
    if device.type == "cuda":
        # pin_memory uses torch's caching host allocator, so this is cheap after warm-up.
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass(frozen=True)
class RealSlots:
    """Where the images of a compact real batch sit in the padded (R * B) layout.

    Attributes:
        index: (V,) ascending slot of each real image, on the device.
        total: R * B, the slots of the padded layout.
        lone_last: the padded layout's chunked embedding (:func:`embed_chunked`) met its
            last slot alone, and that slot holds a real image.
    """

    index: torch.Tensor
    total: int
    lone_last: bool

    @classmethod
    def create(cls, valid: torch.Tensor, chunk: int | None, device: torch.device) -> "RealSlots":
        """From the (R, B) mask of real slots and the chunk the padded batch was embedded in."""
        flat = valid.flatten()
        total = int(flat.numel())
        lone = total == 1 if chunk is None or chunk >= total else total % chunk == 1
        return cls(torch.nonzero(flat).flatten().to(device), total, lone and bool(flat[-1]))

    def embed(self, embed_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
              chunk: int | None) -> torch.Tensor:
        """(total, D) features: ``embed_fn`` of the V ``images`` at their slots, zeros on padding.

        Bit for bit what ``embed_chunked`` gives those slots on the padded batch. On the CPU
        an image's features do not depend on the other images of its call, except in a call
        of ONE image (another kernel, last-bit differences); so an image is embedded alone
        exactly where the padded batch embedded it alone, and never elsewhere (a lone
        remainder is embedded beside a copy of itself).
        """
        body = images[:-1] if self.lone_last else images
        step = chunk or max(1, body.shape[0])
        parts = []
        for i in range(0, body.shape[0], step):
            piece = body[i : i + step]
            if piece.shape[0] == 1:
                parts.append(embed_fn(torch.cat([piece, piece])).flatten(1)[:1])
            else:
                parts.append(embed_fn(piece).flatten(1))
        if self.lone_last:
            parts.append(embed_fn(images[-1:]).flatten(1))
        feat = torch.cat(parts)
        out = feat.new_zeros((self.total, feat.shape[1]))
        return out.index_copy(0, self.index, feat)


@dataclass
class SiameseBatches:
    """Per iteration: a class-balanced real batch and the synthetic set, both augmented by
    ONE DSA draw per class row that the class's real and synthetic images share (DM, KIP,
    FRePo). Everything but the draw is set up once.

    Attributes:
        real_rows: class row of every real image drawn: (R * B,), B = ``sampler.batch_size``;
            compact: (V,), the real slots only.
        syn_rows: (N,) class row of every synthetic image.
        slots: compact batches only (None: padded, or nothing to leave out): where the
            drawn images sit in the padded layout.
    """

    sampler: ClassSampler
    batch_real: int
    dsa: DSA | None
    real_rows: torch.Tensor
    syn_rows: torch.Tensor
    slots: RealSlots | None = None
    _valid: torch.Tensor | None = None  # (R, B) CPU mask of real slots (compact only)

    @classmethod
    def create(cls, sampler: ClassSampler, syn_class: torch.Tensor, batch_real: int, dsa: DSA | None,
               device: torch.device, compact: bool = False, chunk: int | None = None) -> "SiameseBatches":
        """``compact``: draw only the real slots (see :class:`RealSlots`; ``chunk`` is the
        embedding chunk the padded batch would have used). Only for methods whose work on an
        image does not depend on the rest of its batch."""
        width = sampler.batch_size(batch_real)
        real_rows = torch.arange(sampler.num_rows, device=device).repeat_interleave(width)
        syn_rows = class_rows(syn_class, sampler.classes)
        valid = sampler.valid(batch_real)
        if not compact or bool(valid.all()):
            return cls(sampler, batch_real, dsa, real_rows, syn_rows)
        slots = RealSlots.create(valid, chunk, device)
        return cls(sampler, batch_real, dsa, real_rows[slots.index], syn_rows, slots, valid)

    def draw(self, train_images: torch.Tensor, syn_images: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(real batch (R * B, ...) or, compact, (V, ...); synthetic images (N, ...)), augmented
        if ``dsa`` is set. A compact draw takes the same random numbers as a padded one."""
        device = train_images.device
        idx = self.sampler.sample(self.batch_real, generator)
        idx = idx[self._valid] if self._valid is not None else idx.flatten()
        real = train_images[to_device(idx, device)]
        syn = syn_images
        if self.dsa is not None:
            params = self.dsa.sample_params(self.sampler.num_rows, generator).to(device)
            real = self.dsa.apply(real, params.take(self.real_rows))
            syn = self.dsa.apply(syn, params.take(self.syn_rows))
        return real, syn


CPU_CHUNK = 128  # real images per embedding call on the CPU (cache-sized; measured with DM)
# Under bfloat16 autocast smaller calls measured faster for contiguous networks and no worse
# for channels-last ones (one CPU thread, when this default was set; no results file holds it).
CPU_CHUNK_BF16 = 64


def embedding_chunk(device: torch.device, dtype: torch.dtype = torch.float32) -> int | None:
    """How many images :func:`embed_chunked` embeds per call on ``device`` (None: all at once)
    when the pass runs in ``dtype``."""
    if device.type == "cuda":
        return None
    return CPU_CHUNK_BF16 if dtype == torch.bfloat16 else CPU_CHUNK


def embed_chunked(embed_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                  chunk: int | None) -> torch.Tensor:
    """``embed_fn(images)`` flattened to (N, D), computed ``chunk`` images at a time.

    Same result either way; on the CPU chunks of ~128 images stay in cache (faster; see
    benchmarks/results/distill_summary.md). None: one call (what a GPU wants).
    """
    if chunk is None or chunk >= images.shape[0]:
        return embed_fn(images).flatten(1)
    return torch.cat([embed_fn(images[i : i + chunk]).flatten(1) for i in range(0, images.shape[0], chunk)])


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` normalises with batch statistics anywhere."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def match_channel_stats(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Shift and scale ``images`` in place so each channel's mean and std over the whole
    set are ``mean`` and ``std`` (C,).

    Why: a batch-norm network in train mode normalises a batch by its own statistics, so a
    matching loss computed on the synthetic set alone is blind to one affine map of its
    pixels (conv, then batch norm, removes it), and the images drift along it (digits,
    DM with convnet-bn, IPC1: pixel std 4.7 against the real data's 1.0). A learner that
    sees them beside real images, or with running statistics from real data, then meets
    inputs far off its distribution: distilled replay with convnet-bn fell to naive's
    accuracy. Mapping the set back onto the real data's statistics changes nothing the
    loss can see and keeps the images where real images are.
    """
    dims = (0, 2, 3)
    m, s = images.mean(dim=dims, keepdim=True), images.std(dim=dims, keepdim=True).clamp_min(1e-6)
    images.sub_(m).div_(s).mul_(std.view(1, -1, 1, 1)).add_(mean.view(1, -1, 1, 1))


def initial_synthetic(
    dataset: ImageDataset, sampler: ClassSampler, ipc: int, init: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting images and their class ids, grouped by class: ``min(ipc, count)`` per class.

    ``init="real"`` copies distinct random real images (the DM/DSA papers' choice);
    ``init="noise"`` draws standard normal pixels (in normalised space).
    """
    per_class = torch.clamp(sampler.counts, max=ipc)
    syn_class = torch.repeat_interleave(sampler.classes, per_class)
    if init == "real":
        picks = [sampler.table[r, torch.randperm(int(sampler.counts[r]), generator=generator)[: int(per_class[r])]]
                 for r in range(sampler.num_rows)]
        images = dataset.train_images[torch.cat(picks).to(dataset.device)].clone()
    elif init == "noise":
        images = torch.randn((int(per_class.sum()), *dataset.image_shape), generator=generator).to(dataset.device)
    else:
        raise FedcondError(f"init must be 'real' or 'noise', got {init!r}")
    return images.float().contiguous(), syn_class.to(dataset.device)


def class_rows(class_ids: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Row index (position in ``classes``) of every id in ``class_ids``; -1 for ids not in ``classes``."""
    size = max(int(classes.max()), int(class_ids.max()) if class_ids.numel() else 0) + 1
    lookup = torch.full((size,), -1, dtype=torch.long, device=class_ids.device)
    lookup[classes.to(class_ids.device)] = torch.arange(classes.numel(), device=class_ids.device)
    return lookup[class_ids]


def initial_label_logits(syn_class: torch.Tensor, num_classes: int, scale: float) -> torch.Tensor:
    """Learnable label logits: ``scale`` * one-hot (softmax ~ the hard label, still trainable)."""
    return F.one_hot(syn_class, num_classes).float() * scale


def syn_assignment(
    syn_rows: torch.Tensor, num_rows: int, probs: torch.Tensor | None, classes: torch.Tensor
) -> torch.Tensor:
    """(R, N) weights turning synthetic features into per-class means (rows sum to 1).

    Hard labels: 1/s_c on the class's own images; images of no row (``syn_rows`` -1: a
    class the real data lacks) weigh 0. Learned soft labels: each image counts towards
    every class in proportion to its label probability, i.e. the class-conditional mean of
    the soft-labelled set seen as a joint distribution over (image, class).
    """
    if probs is None:
        a = F.one_hot(syn_rows.clamp_min(0), num_rows).T.float() * (syn_rows >= 0).float()
    else:
        a = probs[:, classes.to(probs.device)].T
    return a / a.sum(dim=1, keepdim=True)


def fresh_network(
    name: str, dataset: ImageDataset, generator: torch.Generator, device: torch.device,
    reuse: nn.Module | None = None,
) -> nn.Module:
    """A freshly initialised network whose weights are a function of one generator draw.

    On CPU it is built by ``get_model(seed=...)``. On CUDA, ``reuse`` (an earlier network
    of the same kind) is re-initialised in place from a CUDA RNG seeded with the draw, so
    no weights cross the bus and the host never waits.
    """
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    c, h, w = dataset.image_shape
    if device.type != "cuda" or reuse is None:
        return get_model(name, c, dataset.num_classes, (h, w), seed=seed).to(device)
    with torch.random.fork_rng(devices=[device]):
        torch.manual_seed(seed)
        for module in reuse.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return reuse
