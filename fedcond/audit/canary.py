"""The canary audit: an empirical lower bound on a method's ε from one distillation.

The one-run audit of Steinke, Nasr & Jagielski (NeurIPS 2023; :mod:`fedcond.audit.one_run`):

1. ``canaries`` training images are drawn at random (or crafted: random-pixel images, far
   from the data and from each other in a network's embedding); each is included
   independently with probability 1/2, and the method distills the included ones only: the
   canaries are the whole training set it sees. A DP guarantee holds for every data set,
   so the auditor may pick the one that exposes the most; here a method that starts from
   real images (DM's default) must start from canaries.
2. Every canary is scored by an attack fixed in advance (``attack``). ``blackbox`` reads
   the set file: pixel distance to the synthetic images of its class, canaries that are
   some synthetic image's nearest canary first (a set that started from a canary, or keeps
   one, has an image closest to it), each group ordered by the distance to its nearest
   synthetic image. It sees copying only. ``whitebox`` and ``whitebox-inner`` read what
   the mechanism released, in its own space (:mod:`fedcond.audit.whitebox`: DP-DM's noisy
   class sums under its public network bank); ``auto`` is ``whitebox`` where the method
   exposes such a release, else ``blackbox``.
3. For each k of a grid fixed in advance, the auditor guesses "in" for the k best-scoring
   canaries and abstains on the others; the correct guesses give a bound on ε at
   ``confidence`` (Bonferroni over the grid, so the best k may be reported).

The result is a lower bound: a method whose bound is high leaks at least that much; a
bound near zero does not show privacy (another attack might do better), and no DP method
may show a bound above its ε except with probability 1 - confidence. With m canaries the
bound cannot exceed what k correct guesses out of k prove (``largest_provable_bound``,
the grid's ceiling), and an attack cannot exceed what it can guess right at best
(``attack_ceiling``): the pixel attack singles out at most one canary per synthetic image,
a white-box attack at most every kept canary. Every attack that applies is scored on the
same run (``attacks``, each at ``confidence`` by itself); the headline bound is the chosen one's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from fedcond.audit.memorisation import nearest, pixels
from fedcond.audit.one_run import epsilon_lower_bound
from fedcond.audit.whitebox import SCORES, canary_vectors, dp_dm_release, has_release, whitebox_scores
from fedcond.data import ImageDataset
from fedcond.distill.base import Callbacks, DistillConfig, Distiller
from fedcond.errors import FedcondError
from fedcond.synthetic import SyntheticSet

ATTACKS = ("auto", "whitebox", "whitebox-inner", "blackbox")
SCORE = ("pixel distance to the synthetic images of the canary's class: canaries that are some synthetic image's "
         "nearest canary first, each group by its distance to the nearest synthetic image")
CANARIES = ("random training images, each included with probability 1/2; the method distills the included "
            "ones only (they are its whole training set)")
CRAFTED = ("crafted: images of uniform random pixels (out of distribution, far apart in embedding space), labels "
           "spread evenly over the classes, each included with probability 1/2; the method distills the included "
           "ones only (they are its whole training set)")


@dataclass
class CanaryConfig:
    """Settings of a canary audit.

    Attributes:
        canaries: m, the number of canaries (at most the training split's size); the
            bound's δ term grows with m (2 m δ), so keep m δ small.
        confidence: the bound holds with this probability (1 - the test's false-positive rate).
        delta: the δ at which ε is bounded (use the method's own δ when it has one).
        guesses: the grid of k (numbers of "in" guesses); empty: about 1, 2, 5, 10, 20 and
            50 % of m.
        seed: the canaries' draw and inclusion (a stream apart from the method's seed).
        attack: the score the headline bound comes from (see the module docstring).
        crafted: crafted canaries (random-pixel images) instead of random training images.
    """

    canaries: int = 1000
    confidence: float = 0.95
    delta: float = 1e-5
    guesses: tuple[int, ...] = ()
    seed: int = 0
    attack: str = "auto"
    crafted: bool = False

    def __post_init__(self) -> None:
        if self.canaries < 2:
            raise FedcondError(f"--canaries must be >= 2, got {self.canaries}")
        if not 0 < self.confidence < 1:
            raise FedcondError(f"--confidence must be in (0, 1), got {self.confidence}")
        if not 0 <= self.delta < 1:
            raise FedcondError(f"delta must be in [0, 1), got {self.delta}")
        if any(k < 1 or k > self.canaries for k in self.guesses):
            raise FedcondError(f"every number of guesses must be in [1, {self.canaries}], got {self.guesses}")
        if self.attack not in ATTACKS:
            raise FedcondError(f"--attack must be one of {', '.join(ATTACKS)}, got {self.attack!r}")

    def grid(self) -> list[int]:
        """The k values tried (fixed before anything is seen)."""
        if self.guesses:
            return sorted(set(self.guesses))
        return sorted({max(1, round(self.canaries * f)) for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)})


@dataclass
class CanaryAudit:
    """What a canary audit found (see :meth:`to_json` for the keys)."""

    config: CanaryConfig
    method: str
    method_config: dict[str, Any]
    stated_epsilon: float | None
    included: int
    guesses: list[dict[str, Any]]
    bound: float
    largest_provable_bound: float
    seconds: float
    attack: str = "blackbox"
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        best = max(self.guesses, key=lambda g: g["epsilon_lower_bound"])
        return {
            "empirical_epsilon_lower_bound": self.bound,
            "confidence": self.config.confidence,
            "delta": self.config.delta,
            "stated_epsilon": self.stated_epsilon,
            "method": self.method,
            "canaries": self.config.canaries,
            "canaries_included": self.included,
            "best_guesses": best["guesses"],
            "best_correct": best["correct"],
            "largest_provable_bound": self.largest_provable_bound,
            "guesses": self.guesses,
            "test": "Steinke, Nasr & Jagielski 2023 (one run), Bonferroni over the grid of guesses",
            "attack": self.attack,
            "attack_ceiling": self.attacks[self.attack]["ceiling"],
            "attack_ceiling_guesses": self.attacks[self.attack]["ceiling_guesses"],
            "attacks": self.attacks,
            "score": self.attacks[self.attack]["score"],
            "canary_kind": CRAFTED if self.config.crafted else CANARIES,
            "method_config": self.method_config,
            "audit_config": {**vars(self.config), "guesses": self.config.grid()},
            "seconds": self.seconds,
            **self.extra,
        }


def canary_scores(sset: SyntheticSet, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...],
                  std: tuple[float, ...]) -> torch.Tensor:
    """(m,) score of each canary (higher: more likely in), from pixels (RMS distance d in
    [0, 1]): -d to the nearest synthetic image of its class for a canary that is some such
    image's nearest canary (as the image a set started from is), ``-1 - d`` for the others,
    so claimed canaries rank first; -inf where the set has no image of its class."""
    if sset.factor > 1 or sset.config.get("zca"):
        raise FedcondError("the canary audit compares pixels: distill without zca and multi-formation (factor 1)")
    syn_px, syn_y = pixels(sset.images, sset.mean, sset.std), sset.hard_labels.cpu()
    can_px = pixels(images, mean, std)
    scores = torch.full((labels.numel(),), -float("inf"))
    for c in labels.unique().tolist():
        mine = torch.nonzero(labels == c).flatten()
        theirs = syn_y == c
        if not bool(theirs.any()):
            continue
        distance = nearest(can_px[mine], syn_px[theirs])[0]
        claimed = torch.zeros(mine.numel(), dtype=torch.bool)
        claimed[nearest(syn_px[theirs], can_px[mine])[1]] = True  # each synthetic image's nearest canary
        scores[mine] = torch.where(claimed, -distance, -1.0 - distance)
    return scores


def guess_results(scores: torch.Tensor, included: torch.Tensor, config: CanaryConfig,
                  rng: np.random.Generator) -> tuple[list[dict[str, Any]], float]:
    """For each k of the grid: the k best-scoring canaries guessed "in" (ties broken at
    random), how many are, and the bound they prove at the Bonferroni-corrected confidence;
    and the largest bound the grid could prove (all guesses right)."""
    m, grid = scores.numel(), config.grid()
    per_test = 1.0 - (1.0 - config.confidence) / len(grid)
    tiebreak = torch.from_numpy(rng.permutation(m))
    order = torch.from_numpy(np.lexsort((tiebreak.numpy(), -scores.double().numpy())))  # best first
    out = []
    for k in grid:
        correct = int(included[order[:k]].sum())
        out.append({"guesses": k, "correct": correct,
                    "epsilon_lower_bound": epsilon_lower_bound(m, k, correct, config.delta, per_test)})
    largest = max(epsilon_lower_bound(m, k, k, config.delta, per_test) for k in grid)
    return out, largest


def attack_ceiling(m: int, cap: int, config: CanaryConfig) -> float:
    """The largest bound an attack that can guess at most ``cap`` canaries right proves on
    the grid: ``min(k, cap)`` right out of each k, at the Bonferroni-corrected confidence."""
    grid = config.grid()
    per_test = 1.0 - (1.0 - config.confidence) / len(grid)
    return max(epsilon_lower_bound(m, k, min(k, cap), config.delta, per_test) for k in grid)


def crafted_canaries(data: ImageDataset, m: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` crafted canaries: uniform random pixels in [0, 1] under ``data``'s normalisation,
    labels spread evenly over the classes (in a random order)."""
    c, h, w = data.image_shape
    raw = torch.from_numpy(rng.random((m, c, h, w))).float()
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    labels = torch.from_numpy(rng.permutation(np.arange(m) % data.num_classes)).long()
    return (raw - mean) / std, labels


def resolve_attack(method: str, config: DistillConfig, attack: str) -> str:
    """``attack`` with ``auto`` resolved: ``whitebox`` where ``method`` exposes its release."""
    if attack == "auto":
        return "whitebox" if has_release(method, config) else "blackbox"
    if attack != "blackbox" and not has_release(method, config):
        raise FedcondError(f"--attack {attack} reads a mechanism's release, which {method} does not expose (only "
                           "dp-dm with mechanism=release does): use --attack blackbox")
    return attack


def _score_attacks(sset: SyntheticSet, release: Any, images: torch.Tensor, labels: torch.Tensor,
                   data: ImageDataset, included: torch.Tensor, config: CanaryConfig, rng: np.random.Generator
                   ) -> dict[str, dict[str, Any]]:
    """Every attack that applies, scored on the same run: its guesses, bound and ceiling."""
    scores: dict[str, tuple[torch.Tensor, str, int]] = {}
    kept = int(included.sum())
    if sset.factor == 1 and not sset.config.get("zca"):
        syn = torch.bincount(sset.hard_labels.cpu(), minlength=data.num_classes)
        kept_per_class = torch.bincount(labels[included], minlength=data.num_classes)
        cap = int(torch.minimum(syn, kept_per_class).sum())  # one canary per synthetic image at best
        scores["blackbox"] = (canary_scores(sset, images, labels, data.mean, data.std), SCORE, cap)
    if release is not None:
        vectors = canary_vectors(release, images, labels)
        for name in ("whitebox", "whitebox-inner"):
            scores[name] = (whitebox_scores(release, vectors, labels, name), SCORES[name], kept)
    out = {}
    for name, (score, text, cap) in scores.items():
        guesses, _ = guess_results(score, included, config, rng)
        out[name] = {"epsilon_lower_bound": max(g["epsilon_lower_bound"] for g in guesses), "guesses": guesses,
                     "ceiling": attack_ceiling(config.canaries, cap, config), "ceiling_guesses": cap, "score": text}
    return out


def canary_audit(data: ImageDataset, distiller: Distiller, method_config: DistillConfig, config: CanaryConfig,
                 method_seed: int = 0, device: torch.device | str = "cpu", callbacks: Callbacks = None,
                 on_step: Callable[[str], None] | None = None) -> tuple[CanaryAudit, SyntheticSet]:
    """Run one canary audit of ``distiller`` (with ``method_config``) on ``data``'s training
    images; return it and the set the method released."""
    start = time.perf_counter()
    say = on_step or (lambda _: None)
    n = int(data.train_labels.numel())
    if config.canaries > n:
        raise FedcondError(f"--canaries {config.canaries} is more than the {n} training images")
    # The auditor's randomness: a stream apart from the method's (the theorem needs the
    # inclusions independent of everything the method draws).
    rng = np.random.default_rng([config.seed, 0xCA9A7])
    picked = torch.from_numpy(rng.choice(n, size=config.canaries, replace=False)).long()
    included = torch.from_numpy(rng.random(config.canaries) < 0.5)
    if config.crafted:
        images, labels = crafted_canaries(data, config.canaries, rng)
    else:
        images, labels = data.train_images[picked].cpu(), data.train_labels[picked].cpu()
    attack = resolve_attack(distiller.name, method_config, config.attack)
    say(f"distilling with {int(included.sum())} of {config.canaries} canaries")
    train = replace(data, train_images=images[included].to(data.device), train_labels=labels[included].to(data.device))
    release = None
    if has_release(distiller.name, method_config):  # every attack is scored, the headline is the chosen one's
        sset, release = dp_dm_release(data, distiller, method_config, train, method_seed, device, callbacks)
    else:
        sset = distiller.distill(train, method_config, torch.Generator().manual_seed(method_seed), device, callbacks)
    say("scoring the canaries")
    attacks = _score_attacks(sset, release, images, labels, data, included, config, rng)
    if attack not in attacks:
        raise FedcondError("the black-box attack compares pixels: distill without zca and multi-formation (factor 1), "
                           "or audit the release (--attack whitebox)")
    guesses = attacks[attack]["guesses"]
    largest = attack_ceiling(config.canaries, config.canaries, config)  # the grid's: k right out of every k
    privacy = sset.config.get("privacy") or {}
    audit = CanaryAudit(config, distiller.name, method_config.to_dict(), privacy.get("epsilon"),
                        int(included.sum()), guesses, attacks[attack]["epsilon_lower_bound"], largest,
                        time.perf_counter() - start, attack, attacks)
    return audit, sset
