"""White-box canary scores: a method's release read in the mechanism's own space.

A set file shows a method's output after every post-processing step; what a DP mechanism
releases comes before them, and an attack on it is as strong as an attack on the output can
be (post-processing only loses information). DP-DM's ``release`` mechanism releases, once,
per class c, the noisy sum ``S_c`` of every training example's vector
``u = [clipped embedding under a bank of random networks, count_weight * clip_norm]`` (its
class mean ``T_c`` and noisy size ``n_c`` are that sum divided out;
:mod:`fedcond.distill.dp_release`). The bank is public (it follows from the run's seed,
which the set records), so the auditor can put every canary in the same space. Two scores:

- ``whitebox`` (decoding): the released sum is ``S_c = sum_i b_i u_i + noise`` with
  ``b_i = 1`` for the kept canaries of class c and 0 for the others; the least-squares
  solution ``b`` of that linear system (one per class, canaries as unknowns) is each
  canary's score. With the noise off it recovers every ``b_i`` exactly; the noise enters
  each ``b_i`` as ``sigma / |the part of u_i no other canary's vector explains|``, which is
  why crafted canaries (images far from the data and from each other in embedding space)
  raise it.
- ``whitebox-inner``: ``score_i = <u_i - ū_c, S_c - n_c ū_c>`` = ``n_c <u_i - ū_c, T_c - ū_c>``,
  ū_c the mean vector of the class's canaries (in and out alike: the auditor knows the
  canaries, not which were kept). A kept canary adds ``|u_i - ū_c|^2`` to its score, but so
  does every other kept canary's overlap with it, which limits the score even with no noise.

:func:`dp_dm_release` runs the method itself and reads the release it wrote: the run's
checkpoint (in a temporary folder) holds the noisy release, as a resume needs it; the bank
is rebuilt from the run's seed as :class:`~fedcond.distill.dp_dm.DPDM` draws it (a test
checks that a noiseless run's release is the sum of the kept canaries' vectors under this
bank). Methods without such a release (every other method, and DP-DM's ``iterate``) are
audited black-box, on the set file (:func:`fedcond.audit.canary.canary_scores`).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from fedcond.augment import DSA
from fedcond.data import ImageDataset
from fedcond.distill.base import Callbacks, DistillConfig, Distiller
from fedcond.distill.checkpoint import CHECKPOINT_NAME
from fedcond.distill.dp_dm import NoiseStart
from fedcond.distill.dp_release import make_bank
from fedcond.errors import FedcondError
from fedcond.privacy.mechanism import clip_rows
from fedcond.synthetic import SyntheticSet

SCORES = {
    "whitebox": "white-box decoding: each canary's coefficient in the least-squares fit of its class's released noisy "
                "sum by the canaries' vectors (clipped embeddings under the release's public network bank, and the "
                "count coordinate)",
    "whitebox-inner": "white-box inner product: n_c <u_i - mean_c, T_c - mean_c>, u_i the canary's clipped embedding "
                      "under the release's public network bank, T_c its class's released noisy mean, n_c the noisy "
                      "class size, mean_c the mean embedding of the class's canaries (in and out)",
}

Embed = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Release:
    """What a method released in its mechanism's space, and how to put a canary there.

    Attributes:
        sums: (K, D + 1) the released noisy per-class sums (embedding part, then the count coordinate).
        embed: ``embed(images, labels)`` -> (m, D + 1), each example's vector as the mechanism sums it.
    """

    sums: torch.Tensor
    embed: Embed


def has_release(method: str, config: DistillConfig) -> bool:
    """Whether ``method`` with ``config`` exposes a release the white-box scores can read."""
    return method == "dp-dm" and getattr(config, "mechanism", None) == "release"


def dp_dm_release(data: ImageDataset, distiller: Distiller, config: DistillConfig, train: ImageDataset,
                  seed: int, device: torch.device | str = "cpu", callbacks: Callbacks = None
                  ) -> tuple[SyntheticSet, Release]:
    """Distill ``train`` with DP-DM ``release`` (``config``; seed ``seed``) and read what it
    released: the noisy sums from the run's checkpoint, the bank from the seed. ``data``
    gives the public parts (classes, image shape) the bank is drawn for."""

    if not has_release(distiller.name, config):
        raise FedcondError(f"{distiller.name} exposes no release to audit white-box: use --attack blackbox")
    device = torch.device(device)
    with tempfile.TemporaryDirectory(prefix="fedcond-canary-") as tmp:
        sset = distiller.distill(train, replace(config, checkpoint_dir=tmp), torch.Generator().manual_seed(seed),
                                 device, callbacks)
        state = torch.load(Path(tmp) / CHECKPOINT_NAME, map_location="cpu", weights_only=True)["method_state"]
    # Back from (means, sizes / q) to the noisy sums, as dp_release.noisy_means divided them.
    count = config.count_weight * config.clip_norm
    counts = state["sizes"].double() * (config.sample_rate or 1.0)
    sums = torch.cat([state["means"].double() * counts.clamp_min(1.0)[:, None], (counts * count)[:, None]], dim=1)
    # The bank as DPDM._distill draws it: the noise images first, then the networks and their DSA draws.
    public = data.to(device)
    generator = torch.Generator().manual_seed(seed)
    NoiseStart.draw(public, config, generator, device)
    dsa = DSA(config.dsa_strategy) if config.dsa else None
    bank = make_bank(public, config, generator, dsa)
    member_clip = config.clip_norm / math.sqrt(len(bank))

    @torch.no_grad()
    def embed(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images, labels = images.to(device), labels.to(device)
        parts = []
        for member in bank:
            x = dsa.apply(images, member.dsa.take(labels)) if member.dsa is not None else images
            parts.append(clip_rows(member.net.embed(x).flatten(1), member_clip))
        parts.append(torch.full((labels.numel(), 1), count, device=device))
        return torch.cat(parts, dim=1).double().cpu()

    return sset, Release(sums, embed)


def canary_vectors(release: Release, images: torch.Tensor, labels: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(m, D + 1) every canary's vector in the release's space."""
    return torch.cat([release.embed(images[i : i + chunk], labels[i : i + chunk])
                      for i in range(0, labels.numel(), chunk)])


def whitebox_scores(release: Release, vectors: torch.Tensor, labels: torch.Tensor, attack: str) -> torch.Tensor:
    """(m,) each canary's score under ``attack`` (``whitebox`` or ``whitebox-inner``; higher:
    more likely in), from its vector (:func:`canary_vectors`); see the module docstring."""
    if attack not in SCORES:
        raise ValueError(f"unknown white-box attack {attack!r}")
    scores = torch.empty(labels.numel())
    for c in labels.unique().tolist():
        mine = labels == c
        u, target = vectors[mine], release.sums[c]
        if attack == "whitebox":
            scores[mine] = torch.linalg.lstsq(u.T, target[:, None]).solution.flatten().float()
        else:
            centre = u.mean(dim=0)
            scores[mine] = ((u - centre) @ (target - target[-1] / centre[-1] * centre)).float()
    return scores
