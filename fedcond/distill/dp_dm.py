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

``release`` measures better, hence the default: on digits IPC10 (200 iterations, 2
evaluation runs) it reached 0.819 at ε = 1 and 0.928 at ε = 10, where ``iterate`` reached
0.426 / 0.903 (sample rate 1) and 0.509 / 0.879 (sample rate 0.1). On MNIST IPC10
``release`` reaches 0.908 at ε = 1 and 0.926 at ε = 10 (benchmarks/results/privacy_mnist.md). Accounting is Opacus's
(:mod:`fedcond.privacy.accounting`), under add/remove-one-example adjacency.

The Gaussian noise comes from a generator of its own, seeded from the operating system's
secret randomness (``noise_seed=-1``): the run's seed is written into the set, and noise
anyone can recompute would protect nothing. The secret seed is kept only in the run's
checkpoint, so a resumed run reuses the same release instead of making a second one.

What the guarantee covers, and what it assumes: the images start from noise (a real-image
start would hand over the images it starts from), labels are the public class list, and
the data set's normalisation constants are treated as public (as DP-SGD papers do).
Networks run in eval mode so that no example's embedding depends on another's (train-mode
batch norm would mix a batch). Classes whose noisy size falls below ``min_class_size``
(default three standard deviations of the size noise) get no images: their noisy mean is
mostly noise, and dropping them is post-processing too.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedcond.augment import DSA, DSAParams
from fedcond.data import ImageDataset
from fedcond.distill.base import Callbacks, DistillConfig, generator_seed, register
from fedcond.distill.checkpoint import CHECKPOINT_NAME, run_fingerprint
from fedcond.distill.loop import IterativeConfig, RunState, finish_set, run_loop
from fedcond.distill.matching import embed_chunked, embedding_chunk, fresh_network
from fedcond.errors import FedcondError
from fedcond.privacy.accounting import ACCOUNTANTS, PrivacySpend, calibrate
from fedcond.privacy.mechanism import add_noise, class_sums, clip_rows, noisy_means, sensitivity
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
            per iteration, 0 = about ``batch_real`` examples per class (``batch_real *
            classes / train size``); release: of the one release, 0 = 1 (all data; lower is
            cheaper on large data sets, and amplification repays part of the lost signal).
        clip_norm: bound on each example's (whole) embedding norm. Embeddings of the
            instance-norm ConvNet have nearly equal norms, so clipping normalises them and
            this value only sets the scale.
        count_weight: the class-size coordinate, in units of ``clip_norm``: larger gives
            better class sizes and noisier means.
        min_class_size: classes whose noisy size is below this get no images; < 0 = three
            standard deviations of the size noise.
        accountant: Opacus's ``prv`` (tight) or ``rdp``.
        noise_seed: see the field's comment; -1 = secret.
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
    # The Gaussian noise's own seed: -1 (default) draws it from the operating system's secret
    # randomness, kept only in the run's checkpoint. A fixed seed makes the noise
    # reproducible, for tests: anyone who knows it can recompute the noise, so the
    # guarantee does not hold against them.
    noise_seed: int = -1

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
        if self.clip_norm <= 0 or self.count_weight <= 0:
            raise FedcondError("clip_norm and count_weight must be > 0")
        if self.noise_seed < -1:
            raise FedcondError(f"noise_seed must be -1 (secret) or >= 0, got {self.noise_seed}")
        if self.accountant not in ACCOUNTANTS:
            raise FedcondError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")


@dataclass
class _Member:
    """One network of the release bank: the network, its per-class augmentation draw (or
    None) and the released noisy per-class means in unit scale, (K, D)."""

    net: nn.Module
    dsa: DSAParams | None
    target: torch.Tensor


class _NoiseSource:
    """The run's noise generator (a MethodState, checkpointed with the run) and, in iterate
    mode, the running sum of the noisy class sizes.

    The noise must not come from the run's ``generator``: its seed is recorded in the set,
    and noise anyone can recompute protects nothing. A secret seed lives only here and in
    the checkpoint, so a resumed run releases the same noise instead of a second release.
    """

    def __init__(self, seed: int, num_classes: int) -> None:
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.size_sum = torch.zeros(num_classes)
        self.steps = 0
        self.planned_steps = 1

    @classmethod
    def create(cls, config: "DPDMConfig", num_classes: int, planned_steps: int) -> "_NoiseSource":
        """From the config's fixed seed, the resumable checkpoint's, or secret randomness.

        ``planned_steps``: the private steps the noise was calibrated for. Iterate mode's
        noise depends on the number of iterations, so a checkpoint planned for another
        number cannot be continued (its first steps had other noise).
        """
        saved = _checkpointed_state(config)
        if saved is not None and config.mechanism == "iterate" and int(saved["planned_steps"]) != planned_steps:
            raise FedcondError(f"dp-dm iterate: the checkpoint in {config.checkpoint_dir} was calibrated for "
                               f"{int(saved['planned_steps'])} iterations, not {planned_steps}; resume with the "
                               "same number (the noise of every step depends on it) or delete the checkpoint")
        seed = config.noise_seed if config.noise_seed >= 0 else (int(saved["seed"]) if saved is not None else None)
        source = cls(secrets.randbits(62) if seed is None else seed, num_classes)
        source.planned_steps = planned_steps
        return source

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator": self.generator.get_state(), "size_sum": self.size_sum.clone(),
                "steps": self.steps, "planned_steps": self.planned_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])
        self.size_sum, self.steps = state["size_sum"].clone(), int(state["steps"])
        self.planned_steps = int(state["planned_steps"])


def _checkpointed_state(config: "DPDMConfig") -> dict[str, Any] | None:
    """The noise state of an earlier run in ``config.checkpoint_dir``, read before the
    release (run_loop restores it only after), or None when there is none."""
    if not config.checkpoint_dir:
        return None
    path = Path(config.checkpoint_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)["method_state"]
        return {"seed": int(state["seed"]), "planned_steps": int(state["planned_steps"])}
    except Exception:  # noqa: BLE001  (unreadable or another method's: run_loop reports it when it loads the file)
        return None


@register("dp-dm")
class DPDM:
    """Differentially private distribution matching; see the module docstring."""

    config_class = DPDMConfig
    name: str

    def distill(
        self,
        dataset: ImageDataset,
        config: DistillConfig,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        callbacks: Callbacks = None,
    ) -> SyntheticSet:
        """Distill ``dataset`` with (``config.epsilon``, ``config.delta``)-DP.

        The returned set's ``config["privacy"]`` holds the guarantee: ε spent, δ, noise
        multiplier, sensitivity, clipping, sample rate, steps, accountant, mechanism.
        Not an :class:`~fedcond.distill.loop.IterativeDistiller`: every class starts from
        noise whatever the private data hold, the release comes before the loop, and classes
        are dropped after it, so it shares only :func:`run_loop` (and no snapshots are taken:
        they would show classes the final set drops).
        """
        config = DPDMConfig.coerce(config)
        device = torch.device(device)
        seed = generator_seed(generator)
        dataset = dataset.to(device)
        k = dataset.num_classes
        n = int(dataset.train_labels.numel())
        if n == 0:
            raise FedcondError("the data set has no training images to distill")
        if config.mechanism == "release":
            q, steps = config.sample_rate or 1.0, 1
        else:
            q = config.sample_rate or min(1.0, config.batch_real * k / n)
            steps = max(1, config.iterations)
        spend = calibrate(config.epsilon, config.delta, q, steps, config.accountant)
        sens = sensitivity(config.clip_norm, config.count_weight)
        size_noise = spend.noise_multiplier * sens / (config.count_weight * config.clip_norm)  # one release's

        # Every class of the data set gets ipc images, whatever the private data hold:
        # the set's shape must not depend on them (classes are dropped only after the release).
        syn_class = torch.arange(k, device=device).repeat_interleave(config.ipc)
        images = torch.randn((k * config.ipc, *dataset.image_shape), generator=generator).to(device)
        state = RunState.create(images, None, config, None)
        assign = torch.nn.functional.one_hot(syn_class, k).T.float() / config.ipc  # (K, N) class means
        dsa = DSA(config.dsa_strategy) if config.dsa else None
        chunk = embedding_chunk(device)

        noise = _NoiseSource.create(config, k, steps)
        if config.mechanism == "release":
            bank, sizes = _release(dataset, config, q, spend.noise_multiplier, sens, generator, noise.generator, dsa,
                                   chunk)
            size_noise /= q
            step = _release_step(bank, state, syn_class, assign, config, generator, dsa)
        else:
            step = _iterate_step(dataset, state, syn_class, assign, config, q, spend.noise_multiplier, sens,
                                 generator, dsa, chunk, noise)
        fingerprint = run_fingerprint(self.name, config, seed, dataset.name, int(syn_class.numel()))
        run_loop(step, state, config, generator, fingerprint, callbacks, None, method_state=noise)
        if config.mechanism == "iterate":
            sizes = noise.size_sum / max(1, noise.steps) / q  # each step's size estimate covers a q-sample
            size_noise /= q * math.sqrt(max(1, noise.steps))
        min_size = config.min_class_size if config.min_class_size >= 0 else 3.0 * size_noise
        keep = sizes.cpu() >= min_size
        if not bool(keep.any()):
            raise FedcondError(f"every class's noisy size is below {min_size:.1f}: too few images for epsilon "
                               f"{config.epsilon}; raise epsilon or lower min_class_size")
        sset = finish_set(dataset, state, syn_class, torch.arange(k), config, seed, self.name)
        mask = keep[sset.labels]
        sset.images, sset.labels = sset.images[mask].contiguous(), sset.labels[mask].contiguous()
        sset.config["present_classes"] = torch.nonzero(keep).flatten().tolist()
        sset.config["privacy"] = privacy_record(spend, config, sens, size_noise, keep, sizes)
        return sset.validate()


def privacy_record(spend: PrivacySpend, config: DPDMConfig, sens: float, size_noise: float, keep: torch.Tensor,
                   sizes: torch.Tensor) -> dict[str, Any]:
    """The guarantee and how it was obtained, as stored in the set's metadata and run.json."""
    return {
        **spend.to_json(),
        "mechanism": config.mechanism,
        "clip_norm": config.clip_norm,
        "count_weight": config.count_weight,
        "sensitivity": sens,
        "noise_std": spend.noise_multiplier * sens,
        "bank_size": config.bank_size if config.mechanism == "release" else None,
        "adjacency": "add or remove one training example",
        "library": "opacus",
        "noise_seed": "secret"
        if config.noise_seed < 0
        else "fixed (reproducible: no guarantee against anyone who knows it)",
        "class_size_noise_std": size_noise,
        "dropped_classes": torch.nonzero(~keep).flatten().tolist(),
        "noisy_class_sizes": [round(float(s), 1) for s in sizes.cpu()],
    }


def _embed_unit(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Embeddings clipped to norm 1 (the unit scale both sides are matched in)."""
    return clip_rows(net.embed(images).flatten(1), 1.0)


@torch.no_grad()
def _release(dataset: ImageDataset, config: DPDMConfig, q: float, sigma: float, sens: float,
             generator: torch.Generator, noise: torch.Generator, dsa: DSA | None, chunk: int | None
             ) -> tuple[list[_Member], torch.Tensor]:
    """The one private step of ``release``: the bank's noisy per-class means, and class sizes
    (estimated for the whole data). Networks and augmentations come from ``generator``, the
    sample and the noise from ``noise``."""
    k, m = dataset.num_classes, config.bank_size
    nets = [fresh_network(config.model, dataset, generator, dataset.device).eval().requires_grad_(False)
            for _ in range(m)]
    draws = [dsa.sample_params(k, generator) if dsa is not None else None for _ in range(m)]
    member_clip = config.clip_norm / math.sqrt(m)  # m clipped parts: the whole stays within clip_norm
    # Poisson subsample (q < 1: cheaper on large data, partly repaid by amplification),
    # drawn from the secret generator: amplification needs the sample hidden.
    picked = _poisson(dataset.train_labels.numel(), q, noise, dataset.device)
    images, labels = dataset.train_images[picked], dataset.train_labels[picked]
    probe = dataset.train_images[:1]
    dims = [net.embed(probe).flatten(1).shape[1] for net in nets]
    sums = torch.zeros(k, sum(dims) + 1, device=dataset.device)
    step = chunk or max(1, labels.numel())
    for start in range(0, labels.numel(), step):
        x, y = images[start : start + step], labels[start : start + step]
        parts = []
        for net, draw in zip(nets, draws):
            xa = dsa.apply(x, draw.take(y)) if draw is not None else x
            parts.append(clip_rows(embed_chunked(net.embed, xa, None), member_clip))
        sums += class_sums(torch.cat(parts, dim=1), y, k, config.clip_norm, config.count_weight)
    noisy = add_noise(sums, sigma, sens, noise)
    means, sizes = noisy_means(noisy, config.clip_norm, config.count_weight)
    targets = torch.split(means / member_clip, dims, dim=1)  # back to the unit scale, per network
    return [_Member(net, draw, t) for net, draw, t in zip(nets, draws, targets)], sizes / q


def _poisson(n: int, q: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Indices of a Poisson sample of ``range(n)``: each independently with probability ``q``."""
    if q >= 1.0:
        return torch.arange(n, device=device)
    return torch.nonzero(torch.rand(n, generator=generator) < q).flatten().to(device)


def _release_step(bank: list[_Member], state: RunState, syn_class: torch.Tensor, assign: torch.Tensor,
                  config: DPDMConfig, generator: torch.Generator, dsa: DSA | None):  # noqa: ANN202
    """One matching iteration against ``members_per_step`` random networks of the bank."""
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


def _iterate_step(dataset: ImageDataset, state: RunState, syn_class: torch.Tensor, assign: torch.Tensor,
                  config: DPDMConfig, q: float, sigma: float, sens: float, generator: torch.Generator,
                  dsa: DSA | None, chunk: int | None, noise: _NoiseSource):  # noqa: ANN202
    """One DM iteration on a Poisson subsample with fresh noise (a private step each time)."""
    k = dataset.num_classes
    n = dataset.train_labels.numel()
    net: nn.Module | None = None

    def step(_: int) -> torch.Tensor:
        nonlocal net
        net = fresh_network(config.model, dataset, generator, dataset.device, reuse=net).eval().requires_grad_(False)
        # Poisson sampling, as the accountant assumes: each example independently with prob q.
        picked = _poisson(n, q, noise.generator, dataset.device)  # the secret generator: see _release
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
            noisy = add_noise(sums, sigma, sens, noise.generator)
            means, sizes = noisy_means(noisy, config.clip_norm, config.count_weight)
        noise.size_sum += sizes.cpu()
        noise.steps += 1
        target = means / config.clip_norm
        loss = ((target - assign @ syn_feat) ** 2).sum()
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        return loss.detach()

    return step
