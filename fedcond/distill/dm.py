"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

Each iteration draws a freshly initialised embedding network and, for every class, pulls
the mean embedding of the synthetic images towards the mean embedding of a random batch
of real images, both seen through the same DSA draw. The loss is the sum over classes of
squared L2 distances; the synthetic images take one SGD step (lr 1.0, momentum 0.5).

Speed: all classes share ONE forward pass over the real batches (R classes x B images,
indices from one vectorised draw) and ONE over the whole synthetic set; class means are a
weighted reduction / one matmul, never a Python loop over classes. The real pass runs
under ``no_grad`` and apart from the synthetic pass: concatenating them made autograd
propagate input gradients through the whole real batch (measured ~2x slower per
iteration on the CPU at MNIST IPC10). The network's parameters never need gradients.
A class with fewer real images than the batch width costs only its images: the real batch
is drawn compact (``SiameseBatches(compact=True)``, padding never embedded; a client of 41
MNIST images in 7 classes embedded 147 slots per iteration before), with exactly the
numbers the padded batch gave, since padding weighed 0. Not with a batch-norm network in
train mode, whose batch statistics did see the padding: it keeps the padded batch.

Precision (``precision``, :mod:`fedcond.precision`; ``real_precision`` is its earlier name
and still works): the real images' pass is DM's whole cost on a CPU, and it only feeds class
means. ``"bfloat16"`` runs the embedding passes under autocast (images, networks' parameters
and the loss stay float32) and, on a CPU, in channels-last networks, oneDNN's fast layout
(:class:`fedcond.models.InstanceNorm` keeps the norm in it). It pays most on CPUs with AMX;
without AMX the 1-channel first convolution, pooling and norm gain and the 128-channel
convolutions lose (measured speeds: benchmarks/results/fast_by_default.md and
scale_mnist_bf16.md). A class mean moves by a small fraction of its norm, far less than the
sampling noise between two random batches of 256. The synthetic pass is rounded too: a class whose synthetic
images are its real ones must see equal features, or rounding alone pushes them apart (with
only the real pass in bfloat16, such images drifted as far as DM moves images).
``"float32"`` keeps earlier sets bit for bit; ``"auto"`` (the default) is bfloat16 on
hardware with fast bfloat16 (AMX CPUs, CUDA GPUs) and float32 elsewhere, resolved when the
run starts and recorded in the set's config as what ran.

Learned soft labels: a class's synthetic mean weights each image by its label probability
for that class (``syn_assignment``), i.e. DM applied to the soft-labelled set seen as a
joint distribution over (image, class); with one-hot labels it is exactly DM.

Multi-formation (``factor`` > 1, :mod:`fedcond.formation`): the learned tensors are
mosaics of ``factor**2`` tiles and the loss sees the decoded tiles, each an image of its
class (real init: every tile starts as a different real image), so a set of the same bytes
matches the class means with ``factor**2`` times as many images.

FedDM (Xiong et al., CVPR 2023) is DM with three changes, all options of this one loop:
the embedding network is a given model (``DistillInputs.embed_model``, the federated
global model) instead of a fresh random one per iteration; each iteration sees a copy of
it with small Gaussian weight perturbations (``rho``), so the images do not over-fit one
network; and the images start from an earlier set (``DistillInputs.initial``, the
client's previous-round set) instead of fresh real images. Iterative FedCond clients call
it so (``fedcond.federated.client_training``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from fedcond.augment import DSA
from fedcond.data import ImageDataset
from fedcond.distill import dm_batch
from fedcond.distill.base import Callbacks, DistillInputs, register
from fedcond.distill.loop import IterativeConfig, IterativeDistiller, RunSetup, Step
from fedcond.distill.matching import (
    RealSlots,
    SiameseBatches,
    class_rows,
    embed_chunked,
    embedding_chunk,
    fresh_network,
    has_batch_norm,
    match_channel_stats,
    syn_assignment,
    to_device,
)
from fedcond.errors import FedcondError
from fedcond.formation import check_factor, decode, encode, repeat_per_tile
from fedcond.models import get_model
from fedcond.precision import DEFAULT_PRECISION, DTYPES, check_precision, resolve_precision
from fedcond.sampling import ClassSampler
from fedcond.synthetic import SyntheticSet

REAL_PRECISIONS = DTYPES  # the published name of the precisions DM knows
PERTURBATIONS = ("relative", "ball")  # DMConfig.perturb


def dm_loss(
    embed_fn: Callable[[torch.Tensor], torch.Tensor],
    real_images: torch.Tensor,
    real_weights: torch.Tensor,
    syn_images: torch.Tensor,
    syn_weights: torch.Tensor,
    chunk: int | None = None,
    real_slots: RealSlots | None = None,
    real_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sum over classes of ``||mean embed(real_c) - mean embed(syn_c)||^2``.

    Args:
        embed_fn: feature extractor, e.g. a (fresh or global) model's ``embed``.
        real_images: (R * B, C, H, W), B consecutive images per class row.
        real_weights: (R, B) averaging weights per class row (rows sum to 1; 0 = padding).
        syn_images: (N, C, H, W) the synthetic images (gradients flow to them).
        syn_weights: (R, N) averaging weights per class row, see ``syn_assignment``.
        chunk: embed the real images this many at a time (see ``embed_chunked``).
        real_slots: ``real_images`` is a compact batch, (V, C, H, W), holding only these
            slots of the (R * B) layout; padding slots (weight 0) are never embedded.
        real_dtype: embed the real and synthetic images under autocast to this dtype
            (float32: no autocast); their features are averaged in float32 either way.
    """
    rows, width = real_weights.shape
    with torch.autocast(real_images.device.type, dtype=real_dtype, enabled=real_dtype != torch.float32):
        with torch.no_grad():
            if real_slots is None:
                real_feat = embed_chunked(embed_fn, real_images, chunk)
            else:
                real_feat = real_slots.embed(embed_fn, real_images, chunk)
        syn_feat = embed_fn(syn_images).flatten(1)
    real_mean = torch.einsum("rb,rbd->rd", real_weights, real_feat.float().view(rows, width, -1))
    syn_mean = syn_weights @ syn_feat.float()
    return ((real_mean - syn_mean) ** 2).sum()


@dataclass
class DMConfig(IterativeConfig):
    """DM settings. The paper runs 20,000 iterations with batch_real 256, lr_images 1.0,
    momentum 0.5, real init and DSA; the default ``iterations`` here is sized for a
    CPU (digits IPC1 in seconds) — pass more for paper-level results."""

    iterations: int = 100  # digits IPC1 in seconds on a CPU (benchmarks/results/methods_digits.md)
    lr_images: float = 1.0
    # DM's loss is a sum of squared feature distances (tens at init), so label logits need
    # a smaller step than the images: at 1.0 labels on digits flip class within 10 iterations.
    lr_labels: float = 0.1
    # With an ``embed_model``: every iteration matches in a copy of it whose parameters p
    # get Gaussian noise of std rho * mean|p| (``perturb = "relative"``); 0 = the model as given.
    rho: float = 0.0
    # How ``rho`` perturbs the embed model: "relative" (above), or "ball": one random direction
    # over all parameters at once, scaled to L2 norm rho (FedDM's ball of radius rho, Xiong et al.).
    perturb: str = "relative"
    # Multi-formation (fedcond.formation): each stored image is a factor x factor mosaic of
    # smaller images, matched (and trained on) one tile at a time; same bytes, factor**2
    # times the images. Real init fills every tile with its own real image.
    factor: int = 1
    # Trained-network sampling (IDM, Zhao et al., CVPR 2023): besides DM's fresh random
    # network, match in networks trained briefly on the real data, whose features separate
    # the classes. Each iteration draws one of 1 + trained_networks uniformly: a fresh
    # network, or pool network k (k = 1..n) trained k * train_steps / n SGD steps from its
    # own random start (perturbed by rho each iteration). 0: DM as published.
    trained_networks: int = 0
    train_steps: int = 100
    train_batch: int = 64
    # The embedding passes in "float32" or "bfloat16" (autocast, channels-last on a CPU; see
    # the module docstring): faster on CPUs with AMX, the same sets up to rounding;
    # "auto": bfloat16 where the device runs it fast (fedcond.precision), resolved at the start.
    precision: str = DEFAULT_PRECISION
    # The earlier name of ``precision`` (then float32 by default): when given, it is the precision.
    real_precision: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_precision(self.precision)
        if self.real_precision is not None:
            if self.real_precision not in REAL_PRECISIONS:
                raise FedcondError(f"real_precision must be one of {', '.join(REAL_PRECISIONS)}, "
                                   f"got {self.real_precision!r}")
            if self.precision not in ("auto", self.real_precision):
                raise FedcondError(f"precision={self.precision} and real_precision={self.real_precision} disagree: "
                                   "give precision alone (real_precision is its earlier name)")
            self.precision = self.real_precision
        if self.rho < 0:
            raise FedcondError(f"rho must be >= 0, got {self.rho}")
        if self.perturb not in PERTURBATIONS:
            raise FedcondError(f"perturb must be one of {', '.join(PERTURBATIONS)}, got {self.perturb!r}")
        if self.trained_networks < 0 or self.train_steps < 1 or self.train_batch < 1:
            raise FedcondError("trained_networks must be >= 0, train_steps and train_batch >= 1")
        if not isinstance(self.factor, int) or self.factor < 1:
            raise FedcondError(f"factor must be an integer >= 1, got {self.factor!r}")


@register("dm")
class DM(IterativeDistiller):
    """Distribution matching; see :func:`dm_loss`."""

    config_class = DMConfig

    accepts = frozenset({"initial", "embed_model"})

    def _distill(self, dataset: ImageDataset, config: DMConfig, generator: torch.Generator, device: torch.device,
                 callbacks: Callbacks, inputs: DistillInputs) -> SyntheticSet:
        """Only the present classes of ``dataset``, up to ``ipc`` images each.

        ``inputs.embed_model``: match in this fixed network's feature space (e.g. the federated
        global model, on ``device``, used in the train/eval mode it is in) instead of a
        fresh random network per iteration; ``config.rho`` perturbs it each iteration.
        ``inputs.initial``: refine this set (its images and hard labels) instead of starting from
        ``config.init``; its images of classes ``dataset`` lacks weigh 0 and stay as they are.
        """
        # What runs is recorded, not "auto": resolved here, for the device the run uses.
        config = replace(config, precision=resolve_precision(config.precision, device))
        flags = _freeze(inputs.embed_model)
        try:
            return super()._distill(dataset, config, generator, device, callbacks, inputs)
        finally:
            _unfreeze(inputs.embed_model, flags)

    def _distill_many(self, datasets: Sequence[ImageDataset], config: DMConfig, generators: Sequence[torch.Generator],
                      device: torch.device, callbacks: Callbacks) -> list[SyntheticSet]:
        """The clients' loops in lockstep with stacked networks where :func:`dm_batch.batchable`
        accepts the settings (the same sets up to rounding; see :mod:`fedcond.distill.dm_batch`),
        else one at a time."""
        if datasets and dm_batch.batchable(config, datasets[0]):
            return dm_batch.distill_batched(datasets, config, generators, device, callbacks)
        return super()._distill_many(datasets, config, generators, device, callbacks)

    def prepare(self, run: RunSetup, generator: torch.Generator, callbacks: Callbacks) -> Step:
        """DM's step: one fresh (or perturbed) network, one matching step on the images."""
        return DMStep(run, generator)


class DMStep:
    """DM's iteration: match the class means in this iteration's network, one step on the images.

    Everything is set up once per run in the constructor (drawing from the run's generator in
    a fixed order: real mosaics, then the trained pool); between iterations only ``net``
    (the last network, re-initialised in place as the next fresh one) and ``copies`` (one
    perturbed copy per pool network) change.
    """

    def __init__(self, run: RunSetup, generator: torch.Generator) -> None:
        config, device, dataset, sampler = run.config, run.device, run.dataset, run.sampler
        self.run, self.config, self.generator = run, config, generator
        self.embed_model = run.inputs.embed_model
        self.real_weights = sampler.weights(config.batch_real, device)
        self.real_dtype = DTYPES[resolve_precision(config.precision, device)]
        self.chunk = embedding_chunk(device, self.real_dtype)
        c, h, w = dataset.image_shape
        self.channels_last = channels_last_networks(device, self.real_dtype, c)
        self.syn_class = self._tiles(run, generator, (h, w))
        probe = self.embed_model if self.embed_model is not None else get_model(config.model, c, dataset.num_classes,
                                                                                (h, w))
        batch_stats = has_batch_norm(probe) and probe.training  # an image's features depend on its batch
        # One DSA draw per class, shared by that class's real and synthetic images.
        self.batches = SiameseBatches.create(sampler, self.syn_class, config.batch_real,
                                             DSA(config.dsa_strategy) if config.dsa else None, device,
                                             compact=not batch_stats, chunk=self.chunk)
        self.hard_assign = syn_assignment(self.batches.syn_rows, sampler.num_rows, None, sampler.classes)
        if self.embed_model is not None and config.trained_networks:
            raise FedcondError("trained_networks matches in networks DM trains itself; with a given embed_model "
                               "(FedDM) leave it at 0")
        self.pool = trained_pool(config, dataset, generator, device)
        self.copies: dict[int, nn.Module] = {}  # one perturbed copy per pool network, overwritten in place
        self.net: nn.Module | None = None  # the last iteration's network (None: the embed model as given)
        # Batch norm hides the set's overall scale from the loss: keep it at the real data's.
        self.pixel_stats = _channel_stats(dataset.train_images) if batch_stats else None

    def _tiles(self, run: RunSetup, generator: torch.Generator, size: tuple[int, int]) -> torch.Tensor:
        """The class of every matched image: the synthetic images', or (factor > 1) their tiles',
        after filling real-init mosaics with real images."""
        factor = self.config.factor
        check_factor(factor, size)
        if factor == 1:
            return run.syn_class
        if run.inputs.initial is None and self.config.init == "real":
            with torch.no_grad():
                run.state.images.copy_(real_mosaics(run.dataset.train_images, run.sampler, run.syn_class, factor,
                                                    generator))
        return repeat_per_tile(run.syn_class, factor)  # one row per tile

    def network(self) -> nn.Module:
        """This iteration's embedding network: a pool network (perturbed by ``rho``), a fresh
        random one, or the given embed model (perturbed by ``rho``)."""
        config, generator, pool = self.config, self.generator, self.pool
        pick = int(torch.randint(0, len(pool) + 1, (1,), generator=generator)) if pool else 0
        if pick > 0:  # a trained network, perturbed so the images do not over-fit it
            if config.rho > 0:
                self.copies[pick] = perturbed(pool[pick - 1], config.rho, generator, reuse=self.copies.get(pick))
                self.net = self.copies[pick]
            else:
                self.net = pool[pick - 1]
        elif self.embed_model is None:
            # never re-initialise a pool network (or its copy) in place as the next fresh one
            mine = [*pool, *self.copies.values()]
            fresh = self.net if self.net is not None and all(self.net is not p for p in mine) else None
            net = fresh_network(config.model, self.run.dataset, generator, self.run.device, reuse=fresh)
            net.requires_grad_(False)
            self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net
        elif config.rho > 0:
            self.net = perturbed(self.embed_model, config.rho, generator, reuse=self.net, kind=config.perturb)
        return self.net if self.net is not None else self.embed_model  # type: ignore[return-value]

    def assignment(self) -> torch.Tensor:
        """(R, N) weights of the synthetic images (tiles) in each class mean: hard, or by the
        learned label probabilities."""
        label_logits = self.run.state.label_logits
        if label_logits is None:
            return self.hard_assign
        probs = repeat_per_tile(torch.softmax(label_logits, dim=1), self.config.factor)
        return syn_assignment(self.batches.syn_rows, self.run.sampler.num_rows, probs, self.run.sampler.classes)

    def regulariser(self, net: nn.Module, tiles: torch.Tensor) -> torch.Tensor | None:
        """A term added to DM's loss this iteration (None: DM's loss alone), given the
        iteration's network and the synthetic images (tiles, classes ``self.syn_class``),
        before augmentation. A method built on DM's loop overrides it (FedAF's knowledge matching)."""
        return None

    def __call__(self, _: int) -> torch.Tensor:
        state = self.run.state
        net = self.network()
        real, syn = self.batches.draw(self.run.dataset.train_images, decode(state.images, self.config.factor),
                                      self.generator)
        loss = dm_loss(net.embed, real, self.real_weights, syn, self.assignment(), self.chunk, self.batches.slots,
                       self.real_dtype)
        extra = self.regulariser(net, decode(state.images, self.config.factor))
        if extra is not None:
            loss = loss + extra
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        if self.pixel_stats is not None:
            match_channel_stats(state.images.data, *self.pixel_stats)
        return loss.detach()


def channels_last_networks(device: torch.device, dtype: torch.dtype, channels: int) -> bool:
    """Whether DM's fresh networks run in channels-last layout: on a CPU, in bfloat16 (oneDNN's
    fast layout for the first convolution and pooling; see models.InstanceNorm) and, in
    float32, for colour images (the same sets up to rounding).

    Measured in float32 on the 2-core Xeon without AMX (``benchmarks/results/fast_by_default.md``,
    layout tables): colour (CIFAR-10) DM iterations run faster channels-last; one-channel
    (MNIST) ones do not, GroupNorm's float32 kernel on channels-last input eating the gain.
    """
    return device.type == "cpu" and (dtype == torch.bfloat16 or (dtype == torch.float32 and channels > 1))


def trained_pool(config: DMConfig, dataset: ImageDataset, generator: torch.Generator,
                 device: torch.device) -> list[nn.Module]:
    """``config.trained_networks`` networks, the k-th trained ``k * train_steps / n`` steps on
    ``dataset`` (SGD lr 0.01, momentum 0.9, cross-entropy), frozen; [] when none are asked.

    Built from ``generator`` before the loop's first iteration, so a resumed run rebuilds the same pool.
    """
    n = config.trained_networks
    pool = []
    images, labels = dataset.train_images, dataset.train_labels.to(dataset.train_images.device)
    for k in range(1, n + 1):
        net = fresh_network(config.model, dataset, generator, device)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        for _ in range(max(1, round(k * config.train_steps / n))):
            idx = torch.randint(0, images.shape[0], (config.train_batch,), generator=generator)
            idx = idx.to(images.device)
            loss = nn.functional.cross_entropy(net(images[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        pool.append(net.eval().requires_grad_(False))
    return pool


@torch.no_grad()
def perturbed(model: nn.Module, rho: float, generator: torch.Generator, reuse: nn.Module | None = None,
              kind: str = "relative") -> nn.Module:
    """A copy of ``model`` with perturbed parameters (no gradients).

    ``kind`` "relative": every parameter p is p + N(0, 1) * rho * mean|p|; "ball": all
    parameters move together by one Gaussian direction scaled to L2 norm rho (a point on the
    sphere of radius rho around the model: FedDM's neighbourhood, where in the millions of
    dimensions of a network nearly all of a ball's volume lies). ``reuse`` (an earlier copy of
    the same model) is overwritten instead of copying anew.
    """
    net = reuse if reuse is not None else copy.deepcopy(model).requires_grad_(False)
    params = list(zip(model.parameters(), net.parameters()))
    noises = [to_device(torch.randn(p.shape, generator=generator), p.device) for p, _ in params]
    if kind == "ball":
        norm = torch.sqrt(sum((n.float() ** 2).sum() for n in noises))
        scales = [rho / norm.clamp_min(1e-12)] * len(params)
    else:
        scales = [rho * p.abs().mean() for p, _ in params]
    for (p, q), noise, scale in zip(params, noises, scales):
        q.copy_(p + noise * scale)
    return net


def real_mosaics(train_images: torch.Tensor, sampler: ClassSampler, syn_class: torch.Tensor, factor: int,
                 generator: torch.Generator) -> torch.Tensor:
    """Starting mosaics: every tile of each synthetic image a random real image of its class."""
    rows = class_rows(syn_class, sampler.classes).cpu()
    tiles = factor * factor
    pick = (torch.rand(rows.numel(), tiles, generator=generator) * sampler.counts.cpu()[rows, None]).long()
    idx = sampler.table.cpu()[rows[:, None], pick].flatten()
    return encode(train_images[idx.to(train_images.device)], factor)


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of a set of images (N, C, H, W)."""
    return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))


def _freeze(model: nn.Module | None) -> list[bool]:
    """Turn off parameter gradients of a caller's model; return the flags to restore."""
    if model is None:
        return []
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    return flags


def _unfreeze(model: nn.Module | None, flags: list[bool]) -> None:
    if model is not None:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
