"""The canary audit: an empirical lower bound on a method's ε from one distillation.

The one-run audit of Steinke, Nasr & Jagielski (NeurIPS 2023; :mod:`fedcond.privacy.one_run`):

1. ``canaries`` training images are drawn at random; each is included independently with
   probability 1/2, and the method distills the included ones only: the canaries are
   the whole training set it sees. A DP guarantee holds for every data set, so the auditor
   may pick the one that exposes the most; here a method that starts from real images
   (DM's default) must start from canaries.
2. Every canary is scored against the released set by pixel distance to the synthetic
   images of its class: canaries that are some synthetic image's nearest canary come first
   (a set that started from a canary, or keeps one, has an image closest to it), each
   group ordered by the distance to its nearest synthetic image.
3. For each k of a grid fixed in advance, the auditor guesses "in" for the k best-scoring
   canaries and abstains on the others; the correct guesses give a bound on ε at
   ``confidence`` (Bonferroni over the grid, so the best k may be reported).

The result is a lower bound: a method whose bound is high leaks at least that much; a
bound near zero does not show privacy (another attack might do better), and no DP method
may show a bound above its ε except with probability 1 - confidence. With m canaries the
bound cannot exceed what k correct guesses out of k prove (``largest_provable_bound``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from fedcond.data import ImageDataset
from fedcond.distill.base import Callbacks, DistillConfig, Distiller
from fedcond.errors import FedcondError
from fedcond.privacy.memorisation import nearest, pixels
from fedcond.privacy.one_run import epsilon_lower_bound
from fedcond.synthetic import SyntheticSet

SCORE = ("pixel distance to the synthetic images of the canary's class: canaries that are some synthetic image's "
         "nearest canary first, each group by its distance to the nearest synthetic image")
CANARIES = ("random training images, each included with probability 1/2; the method distills the included "
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
    """

    canaries: int = 1000
    confidence: float = 0.95
    delta: float = 1e-5
    guesses: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.canaries < 2:
            raise FedcondError(f"--canaries must be >= 2, got {self.canaries}")
        if not 0 < self.confidence < 1:
            raise FedcondError(f"--confidence must be in (0, 1), got {self.confidence}")
        if not 0 <= self.delta < 1:
            raise FedcondError(f"delta must be in [0, 1), got {self.delta}")
        if any(k < 1 or k > self.canaries for k in self.guesses):
            raise FedcondError(f"every number of guesses must be in [1, {self.canaries}], got {self.guesses}")

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
            "score": SCORE,
            "canary_kind": CANARIES,
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
    say(f"distilling with {int(included.sum())} of {config.canaries} canaries")
    train = data.subset(picked[included].to(data.train_labels.device))
    sset = distiller.distill(train, method_config, torch.Generator().manual_seed(method_seed), device, callbacks)
    say("scoring the canaries")
    scores = canary_scores(sset, data.train_images[picked].cpu(), data.train_labels[picked].cpu(), data.mean,
                           data.std)
    guesses, largest = guess_results(scores, included, config, rng)
    privacy = sset.config.get("privacy") or {}
    audit = CanaryAudit(config, distiller.name, method_config.to_dict(), privacy.get("epsilon"),
                        int(included.sum()), guesses, max(g["epsilon_lower_bound"] for g in guesses), largest,
                        time.perf_counter() - start)
    return audit, sset
