"""DP-DM's private state: the ``release`` mechanism's one private step, and what a checkpoint
holds of a DP run.

:func:`release_means` is the only place ``release`` reads the training data: per-class sums
of each example's clipped embeddings under a bank of random networks, plus the class
sizes, with one draw of secret Gaussian noise (:mod:`fedcond.privacy.mechanism`,
:mod:`fedcond.privacy.noise`). :class:`DPState` is what a checkpoint keeps besides the
images: that noisy release (or, for ``iterate``, the running sum of its noisy class sizes),
all of it DP output, never a seed or a generator state. :func:`saved_state` reads it back
for a resume, after checking the checkpoint belongs to this run on these data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedcond.augment import DSA, DSAParams
from fedcond.data import ImageDataset
from fedcond.distill.base import describe_difference
from fedcond.distill.checkpoint import CHECKPOINT_NAME
from fedcond.distill.matching import embed_chunked, fresh_network
from fedcond.errors import FedcondError
from fedcond.privacy.mechanism import add_noise, class_sums, clip_rows, noisy_means
from fedcond.privacy.noise import SecretNoise


@dataclass
class BankMember:
    """One network of the release bank: the network, its per-class augmentation draw (or
    None) and the released noisy per-class means in unit scale, (K, D)."""

    net: nn.Module
    dsa: DSAParams | None
    target: torch.Tensor


class DPState:
    """The run's DP output besides the images (a MethodState, checkpointed with the run).

    ``release``: the bank's noisy per-class means (K, sum of the networks' dimensions) and
    the noisy class sizes, once made. ``iterate``: the running sum of each step's noisy
    class sizes. Everything here is DP output or public: no seed, no generator state.
    """

    def __init__(self, num_classes: int, planned_steps: int) -> None:
        self.means = torch.zeros(0)
        self.sizes = torch.zeros(0)
        self.size_sum = torch.zeros(num_classes)
        self.steps = 0
        self.planned_steps = planned_steps

    @property
    def released(self) -> bool:
        return self.means.numel() > 0

    def state_dict(self) -> dict[str, Any]:
        return {"means": self.means.cpu(), "sizes": self.sizes.cpu(), "size_sum": self.size_sum.clone(),
                "steps": self.steps, "planned_steps": self.planned_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.means, self.sizes = state["means"].clone(), state["sizes"].clone()
        self.size_sum, self.steps = state["size_sum"].clone(), int(state["steps"])
        self.planned_steps = int(state["planned_steps"])


def saved_state(config: Any, fingerprint: str, num_classes: int, planned_steps: int) -> DPState | None:
    """The release of an earlier run of this same run in ``config.checkpoint_dir``, read
    before the loop (which restores it only later), or None when there is no checkpoint.

    Raises a FedcondError when the checkpoint belongs to another run or other data (a
    fresh release must not overwrite it), or iterate's was calibrated for another length.
    """
    if not config.checkpoint_dir:
        return None
    path = Path(config.checkpoint_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        saved_fingerprint, state = str(payload["fingerprint"]), payload.get("method_state")
    except Exception as err:  # noqa: BLE001  (unpickling errors come in many types; all mean "unreadable")
        raise FedcondError(f"cannot read checkpoint {path}: {err}; delete it to start over") from None
    if saved_fingerprint != fingerprint:
        there, now = json.loads(saved_fingerprint), json.loads(fingerprint)
        if there.get("method") == now["method"] and there.get("dataset") != now["dataset"]:
            raise FedcondError(f"checkpoint {path} was made on other training data (or with another machine's "
                               "fingerprint key, see fedcond.privacy.fingerprint); resume on the same data, or "
                               "delete it to start over")
        if config.mechanism == "iterate" and there.get("iterations_planned") != now["iterations_planned"]:
            raise FedcondError(f"dp-dm iterate: the checkpoint in {config.checkpoint_dir} was calibrated for "
                               f"{there.get('iterations_planned')} iterations, not {planned_steps}; resume with the "
                               "same number (the noise of every step depends on it) or delete the checkpoint")
        raise FedcondError(f"checkpoint {path} belongs to a different run ({describe_difference(there, now)}); "
                           "use another checkpoint dir or delete it")
    release = DPState(num_classes, planned_steps)
    if state is not None:
        release.load_state_dict(state)
    return release


def make_bank(dataset: ImageDataset, config: Any, generator: torch.Generator, dsa: DSA | None) -> list[BankMember]:
    """The release's random networks and their augmentation draws, from the run's (public)
    generator: the same on a resume, before the loop restores the generator's later state."""
    k = dataset.num_classes
    nets = [fresh_network(config.model, dataset, generator, dataset.device).eval().requires_grad_(False)
            for _ in range(config.bank_size)]
    draws = [dsa.sample_params(k, generator) if dsa is not None else None for _ in range(config.bank_size)]
    return [BankMember(net, draw, torch.zeros(0)) for net, draw in zip(nets, draws)]


@torch.no_grad()
def release_means(dataset: ImageDataset, config: Any, q: float, sigma: float, sens: float, bank: list[BankMember],
             dsa: DSA | None, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The one private step of ``release``: the bank's noisy per-class means, (K, sum of
    the networks' dimensions) in ``clip_norm`` scale, and class sizes (estimated for the
    whole data). The sample and the noise come from a fresh :class:`SecretNoise`."""
    k, m = dataset.num_classes, len(bank)
    noise = SecretNoise()
    member_clip = config.clip_norm / math.sqrt(m)  # m clipped parts: the whole stays within clip_norm
    # Poisson subsample (q < 1: cheaper on large data, partly repaid by amplification),
    # drawn in secret: amplification needs the sample hidden.
    picked = noise.poisson_sample(dataset.train_labels.numel(), q).to(dataset.device)
    images, labels = dataset.train_images[picked], dataset.train_labels[picked]
    sums = torch.zeros(k, sum(embedding_dims(bank, dataset)) + 1, device=dataset.device)
    step = chunk or max(1, labels.numel())
    for start in range(0, labels.numel(), step):
        x, y = images[start : start + step], labels[start : start + step]
        parts = []
        for member in bank:
            xa = dsa.apply(x, member.dsa.take(y)) if member.dsa is not None else x
            parts.append(clip_rows(embed_chunked(member.net.embed, xa, None), member_clip))
        sums += class_sums(torch.cat(parts, dim=1), y, k, config.clip_norm, config.count_weight)
    means, sizes = noisy_means(add_noise(sums, sigma, sens, noise), config.clip_norm, config.count_weight)
    return means.cpu(), (sizes / q).cpu()


def embedding_dims(bank: list[BankMember], dataset: ImageDataset) -> list[int]:
    """Each bank network's embedding dimension (from a public probe, not the data)."""
    probe = torch.zeros((1, *dataset.image_shape), device=dataset.device)
    return [member.net.embed(probe).flatten(1).shape[1] for member in bank]


def set_targets(bank: list[BankMember], means: torch.Tensor, clip_norm: float, dims: list[int]) -> None:
    """Give each network its part of the released means, back in the unit scale."""
    member_clip = clip_norm / math.sqrt(len(bank))
    for member, target in zip(bank, torch.split(means / member_clip, dims, dim=1)):
        member.target = target
