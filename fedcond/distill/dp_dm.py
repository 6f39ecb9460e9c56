"""DP-DM: distribution matching with a differential-privacy guarantee (ε, δ).

DM (:mod:`fedcond.distill.dm`) pulls each class's mean synthetic embedding towards the
class's mean real embedding under random networks. The real data enter DM only through
those per-class means, so DP-DM makes exactly them private: every real example's embedding
is clipped to L2 norm ``clip_norm``, the per-class sums (and class sizes) get Gaussian
noise calibrated to that bound (:mod:`fedcond.privacy.mechanism`), and the synthetic
images are matched to the noisy means. Everything done to the synthetic images afterwards
is post-processing: it costs no further privacy, however many iterations it takes.

Two ways to spend the budget (``mechanism``):

- ``release`` (default; the DP-MERF idea, Harder et al. 2021): draw a fixed bank of
  ``bank_size`` random networks, release the noisy per-class means of ALL real data under
  all of them ONCE (one Gaussian mechanism, sample rate 1), then run as many matching
  iterations against that bank as wanted. Each network's embedding is clipped to
  ``clip_norm / sqrt(bank_size)`` so one example's whole contribution is still bounded by
  ``clip_norm``.
- ``iterate``: DM's own loop — a fresh network every iteration and a Poisson subsample of
  the data (rate ``sample_rate``), with fresh noise each time; the accountant composes the
  ``iterations`` subsampled Gaussian mechanisms. Subsampling amplifies privacy, but the
  noise must cover every iteration.

``release`` measures better, hence the default: on digits IPC10 under public constants
(benchmarks/results/privacy_digits.md: 500 matching iterations, 2 evaluation runs) it
reaches 0.730 at ε = 1 and 0.920 at ε = 10, where ``iterate`` (200 iterations, sample rate
0.1) reaches 0.506 / 0.870; on MNIST IPC10 see benchmarks/results/privacy_mnist.md.
Accounting is Opacus's (:mod:`fedcond.privacy.accounting`), under add/remove-one-example
adjacency.

The Gaussian noise (and the Poisson samples) come from :class:`~fedcond.privacy.noise.SecretNoise`:
operating-system entropy, never seeded by the user and never written anywhere, since the
run's seed is in the set and noise anyone can recompute protects nothing. A resumed run
therefore cannot redraw the same noise, and does not need to: the checkpoint holds the
noisy release itself, which is DP output. ``release`` writes it before anything derived
from it is shown (the first progress line comes after); ``iterate`` checkpoints at every
progress line, so no step whose result was shown is ever redone with other noise. A resume
checks a keyed fingerprint of the training data (:mod:`fedcond.privacy.fingerprint`), not
only the data set's name. The release and that state live in :mod:`fedcond.distill.dp_release`,
the calibrated budget and the record of the guarantee in :mod:`fedcond.distill.dp_budget`.

What the guarantee covers, and what it assumes: add/remove-one adjacency (replace-one is
stated beside it in the record); the images start from noise (a real-image start would
hand over the images it starts from), labels are the public class list, and the data
set's normalisation constants are public: fixed constants, never statistics of the
private images (a data set whose mean and std come from its training images is refused).
In ``iterate`` the sampling rate is given, not computed from the private data size.
Networks run in eval mode so that no example's embedding depends on another's (train-mode
batch norm would mix a batch). Classes whose noisy size falls below ``min_class_size``
(default three standard deviations of the size noise) get no images: their noisy mean is
mostly noise, and dropping them is post-processing too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from fedcond.augment import DSA
from fedcond.data import ImageDataset
from fedcond.distill.base import Callbacks, Distiller, DistillInputs, generator_seed, register
from fedcond.distill.checkpoint import CHECKPOINT_NAME, run_fingerprint, save_checkpoint
from fedcond.distill.dp_budget import Budget, privacy_record
from fedcond.distill.dp_release import (
    BankMember,
    DPState,
    embedding_dims,
    make_bank,
    release_means,
    saved_state,
    set_targets,
)
from fedcond.distill.loop import IterativeConfig, RunState, Step, finish_set, run_loop
from fedcond.distill.matching import embed_chunked, embedding_chunk, fresh_network
from fedcond.errors import FedcondError
from fedcond.privacy.accounting import ACCOUNTANTS
from fedcond.privacy.fingerprint import data_fingerprint
from fedcond.privacy.mechanism import add_noise, class_sums, clip_rows, noisy_means
from fedcond.privacy.noise import SecretNoise
from fedcond.privacy.normalisation import public_normalisation
from fedcond.synthetic import SyntheticSet

MECHANISMS = ("release", "iterate")


@dataclass
class DPDMConfig(IterativeConfig):
    """DP-DM settings: the privacy budget, the mechanism, and DM's matching settings.

    Attributes:
        epsilon, delta: the target (ε, δ); the noise is calibrated so the accountant's ε is
            at most ``epsilon``.
        mechanism: ``release`` (noisy means for a fixed bank, once) or ``iterate`` (noise
            every iteration on a Poisson subsample).
        bank_size: release: random networks in the bank.
        members_per_step: release: bank networks matched per iteration.
        sample_rate: each example's inclusion probability in the (Poisson) sample: iterate:
            per iteration, required (> 0; it must not be computed from the private data
            size); release: of the one release, 0 = 1 (all data; lower is cheaper on large
            data sets, and amplification repays part of the lost signal).
        clip_norm: bound on each example's (whole) embedding norm. Embeddings of the
            instance-norm ConvNet have nearly equal norms, so clipping normalises them and
            this value only sets the scale.
        count_weight: the class-size coordinate, in units of ``clip_norm``: larger gives
            better class sizes and noisier means.
        min_class_size: classes whose noisy size is below this get no images; < 0 = three
            standard deviations of the size noise.
        accountant: Opacus's ``prv`` (tight) or ``rdp``.

    There is no noise seed: the noise comes from operating-system entropy, always.
    """

    iterations: int = 1000  # release: matching only, cheap; iterate: pass fewer (each reads a subsample)
    init: str = "noise"
    optimizer: str = "adam"  # normalised embeddings: Adam's step does not depend on their scale
    lr_images: float = 0.05
    epsilon: float = 10.0
    delta: float = 1e-5
    mechanism: str = "release"
    bank_size: int = 16
    members_per_step: int = 4
    sample_rate: float = 0.0
    clip_norm: float = 1.0
    count_weight: float = 0.5
    min_class_size: float = -1.0
    accountant: str = "prv"
    # Options refused with their reason (fedcond.distill.base.make_distiller reports it).
    refused_options: ClassVar[dict[str, str]] = {
        "noise_seed": "dp-dm draws its noise from the operating system's entropy and takes no seed: noise anyone "
                      "can recompute protects nothing, and the stated epsilon would not hold",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init != "noise":
            raise FedcondError("dp-dm starts from noise: init='real' would copy real images into the set "
                               "outside the privacy guarantee; drop the init option")
        if self.zca:
            raise FedcondError("dp-dm cannot use zca: the whitening is fitted on the private images")
        if self.learn_labels:
            raise FedcondError("dp-dm keeps hard labels; drop learn_labels")
        if not self.epsilon > 0 or not 0 < self.delta < 1:
            raise FedcondError(
                f"dp-dm needs epsilon > 0 and 0 < delta < 1, got epsilon {self.epsilon}, delta {self.delta}"
            )
        if self.mechanism not in MECHANISMS:
            raise FedcondError(f"mechanism must be one of {', '.join(MECHANISMS)}, got {self.mechanism!r}")
        if self.bank_size < 1 or not 1 <= self.members_per_step:
            raise FedcondError("bank_size and members_per_step must be >= 1")
        if not 0 <= self.sample_rate <= 1:
            raise FedcondError(f"sample_rate must be in [0, 1] (0: automatic), got {self.sample_rate}")
        if self.mechanism == "iterate" and self.sample_rate == 0:
            raise FedcondError("dp-dm iterate needs its sampling rate given, e.g. -o sample_rate=0.01: computing it "
                               "from the training set's size would use that private size outside the guarantee")
        if self.clip_norm <= 0 or self.count_weight <= 0:
            raise FedcondError("clip_norm and count_weight must be > 0")
        if self.accountant not in ACCOUNTANTS:
            raise FedcondError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")


@dataclass
class NoiseStart:
    """The synthetic set before any private step: ``ipc`` noise images for every class of
    the data set, whatever the private data hold (the set's shape must not depend on them;
    classes are dropped only after the release), and their optimiser."""

    syn_class: torch.Tensor  # (K * ipc,) class ids
    state: RunState
    assign: torch.Tensor  # (K, N) weights turning embeddings into class means

    @classmethod
    def draw(cls, dataset: ImageDataset, config: DPDMConfig, generator: torch.Generator,
             device: torch.device) -> "NoiseStart":
        k = dataset.num_classes
        syn_class = torch.arange(k, device=device).repeat_interleave(config.ipc)
        images = torch.randn((k * config.ipc, *dataset.image_shape), generator=generator).to(device)
        assign = torch.nn.functional.one_hot(syn_class, k).T.float() / config.ipc
        return cls(syn_class, RunState.create(images, None, config, None), assign)


@register("dp-dm")
class DPDM(Distiller):
    """Differentially private distribution matching; see the module docstring.

    The returned set's ``config["privacy"]`` holds the guarantee: ε spent, δ, noise
    multiplier, sensitivity, clipping, sample rate, steps, accountant, mechanism.
    Not an :class:`~fedcond.distill.loop.IterativeDistiller`: every class starts from
    noise whatever the private data hold (so it takes no starting set), the release comes
    before the loop, and classes are dropped after it, so it shares only :func:`run_loop`
    (and no snapshots are taken: they would show classes the final set drops).
    """

    config_class = DPDMConfig
    private = True

    def _distill(self, dataset: ImageDataset, config: DPDMConfig, generator: torch.Generator, device: torch.device,
                 callbacks: Callbacks, inputs: DistillInputs) -> SyntheticSet:
        public_normalisation(dataset.normalization, self.name, f"{dataset.name}'s mean and std")
        seed = generator_seed(generator)
        dataset = dataset.to(device)
        if int(dataset.train_labels.numel()) == 0:
            raise FedcondError("the data set has no training images to distill")
        budget = Budget.plan(config)
        start = NoiseStart.draw(dataset, config, generator, device)
        dsa = DSA(config.dsa_strategy) if config.dsa else None
        fingerprint = self._fingerprint(dataset, config, seed, start, budget)
        release = saved_state(config, fingerprint, dataset.num_classes, budget.steps) or DPState(
            dataset.num_classes, budget.steps)
        if config.mechanism == "release":
            step = _release_once(dataset, config, budget, start, release, generator, fingerprint, dsa)
            sizes, size_noise = release.sizes, budget.size_noise / budget.sample_rate
        else:
            step = _iterate_step(dataset, start, config, budget, generator, dsa, embedding_chunk(device), release)
        run_loop(step, start.state, loop_config(config), generator, fingerprint, callbacks, None,
                 method_state=release)
        if config.mechanism == "iterate":
            q, done = budget.sample_rate, max(1, release.steps)
            sizes = release.size_sum / done / q  # each step's size estimate covers a q-sample
            size_noise = budget.size_noise / (q * math.sqrt(done))
        return self._private_set(dataset, config, seed, start, budget, sizes, size_noise)

    def _fingerprint(self, dataset: ImageDataset, config: DPDMConfig, seed: int, start: NoiseStart,
                     budget: Budget) -> str:
        """The run's identity in checkpoints: a keyed fingerprint of the training data, not its
        name alone, and iterate's planned length (its noise is calibrated for it)."""
        data_id = f"{dataset.name} (training data {data_fingerprint(dataset)})" if config.checkpoint_dir else ""
        fingerprint = run_fingerprint(self.name, config, seed, data_id, int(start.syn_class.numel()))
        planned = budget.steps if config.mechanism == "iterate" else None
        return json.dumps({**json.loads(fingerprint), "iterations_planned": planned}, sort_keys=True)

    def _private_set(self, dataset: ImageDataset, config: DPDMConfig, seed: int, start: NoiseStart, budget: Budget,
                     sizes: torch.Tensor, size_noise: float) -> SyntheticSet:
        """The final set without the classes whose noisy size is too small, and its privacy record."""
        min_size = config.min_class_size if config.min_class_size >= 0 else 3.0 * size_noise
        keep = sizes.cpu() >= min_size
        if not bool(keep.any()):
            raise FedcondError(f"every class's noisy size is below {min_size:.1f}: too few images for epsilon "
                               f"{config.epsilon}; raise epsilon or lower min_class_size")
        k = dataset.num_classes
        sset = finish_set(dataset, start.state, start.syn_class, torch.arange(k), config, seed, self.name)
        mask = keep[sset.labels]
        sset.images, sset.labels = sset.images[mask].contiguous(), sset.labels[mask].contiguous()
        sset.config["present_classes"] = torch.nonzero(keep).flatten().tolist()
        sset.config["privacy"] = privacy_record(budget.spend, config, budget.sensitivity, size_noise, keep, sizes,
                                                dataset.normalization)
        return sset.validate()


def loop_config(config: DPDMConfig) -> DPDMConfig:
    """The loop's settings: iterate checkpoints at every progress line, so a step whose loss
    was shown is never redone with other noise."""
    if config.mechanism == "release":
        return config
    return replace(config, checkpoint_every=math.gcd(config.checkpoint_every, config.log_every))


def _release_once(dataset: ImageDataset, config: DPDMConfig, budget: Budget, start: NoiseStart, release: DPState,
                  generator: torch.Generator, fingerprint: str, dsa: DSA | None) -> Step:
    """``release``'s one private step (unless a checkpoint holds it already), checkpointed before
    anything derived from it is shown; returns the matching step against the released bank."""
    bank = make_bank(dataset, config, generator, dsa)
    if not release.released:
        release.means, release.sizes = release_means(dataset, config, budget.sample_rate, budget.spend.noise_multiplier,
                                                     budget.sensitivity, bank, dsa, embedding_chunk(dataset.device))
        if config.checkpoint_dir:
            save_checkpoint(Path(config.checkpoint_dir) / CHECKPOINT_NAME, start.state, generator, 0, fingerprint,
                            release)
    set_targets(bank, release.means.to(dataset.device), config.clip_norm, embedding_dims(bank, dataset))
    return _release_step(bank, start, config, generator, dsa)


def _embed_unit(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Embeddings clipped to norm 1 (the unit scale both sides are matched in)."""
    return clip_rows(net.embed(images).flatten(1), 1.0)


def _release_step(bank: list[BankMember], start: NoiseStart, config: DPDMConfig, generator: torch.Generator,
                  dsa: DSA | None) -> Step:
    """One matching iteration against ``members_per_step`` random networks of the bank."""
    state, syn_class, assign = start.state, start.syn_class, start.assign
    per_step = min(config.members_per_step, len(bank))

    def step(_: int) -> torch.Tensor:
        picks = torch.randperm(len(bank), generator=generator)[:per_step].tolist()
        loss = torch.zeros((), device=state.images.device)
        for j in picks:
            member = bank[j]
            syn = dsa.apply(state.images, member.dsa.take(syn_class)) if member.dsa is not None else state.images
            loss = loss + ((member.target - assign @ _embed_unit(member.net, syn)) ** 2).sum()
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        return loss.detach() / per_step

    return step


def _iterate_step(dataset: ImageDataset, start: NoiseStart, config: DPDMConfig, budget: Budget,
                  generator: torch.Generator, dsa: DSA | None, chunk: int | None, release: DPState) -> Step:
    """One DM iteration on a Poisson subsample with fresh noise (a private step each time).
    The noise and the sample come from one :class:`SecretNoise` for the whole run (a
    resumed run makes a new one: the steps it has not done yet need no particular noise)."""
    state, syn_class, assign = start.state, start.syn_class, start.assign
    q, sigma, sens = budget.sample_rate, budget.spend.noise_multiplier, budget.sensitivity
    k = dataset.num_classes
    n = dataset.train_labels.numel()
    noise = SecretNoise()
    net: nn.Module | None = None

    def step(_: int) -> torch.Tensor:
        nonlocal net
        net = fresh_network(config.model, dataset, generator, dataset.device, reuse=net).eval().requires_grad_(False)
        # Poisson sampling, as the accountant assumes: each example independently with prob q.
        picked = noise.poisson_sample(n, q).to(dataset.device)  # in secret: see _release
        real, y = dataset.train_images[picked], dataset.train_labels[picked]
        syn = state.images
        if dsa is not None:
            draw = dsa.sample_params(k, generator)
            real = dsa.apply(real, draw.take(y)) if y.numel() else real
            syn = dsa.apply(syn, draw.take(syn_class))
        syn_feat = _embed_unit(net, syn)
        with torch.no_grad():
            # An empty sample still releases noise, of the same shape.
            feats = embed_chunked(net.embed, real, chunk) if y.numel() else syn_feat.new_zeros(0, syn_feat.shape[1])
            sums = class_sums(feats, y, k, config.clip_norm, config.count_weight)
            noisy = add_noise(sums, sigma, sens, noise)
            means, sizes = noisy_means(noisy, config.clip_norm, config.count_weight)
        release.size_sum += sizes.cpu()
        release.steps += 1
        target = means / config.clip_norm
        loss = ((target - assign @ syn_feat) ** 2).sum()
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        return loss.detach()

    return step
