"""DP-FedAvg's clients: DP-SGD local training with Opacus, and the privacy plan it runs under.

Strategy ``dpfedavg`` is FedAvg whose clients train with DP-SGD (Abadi et al. 2016): every
step takes a Poisson sample of the client's images (each image independently with
probability ``dp_sample_rate``), clips each example's gradient to L2 norm ``dp_clip``,
adds Gaussian noise of std ``noise_multiplier * dp_clip`` to their sum and divides by a
public constant (``batch_size``, the expected batch the learning rate is tuned for).
Everything after the noise — momentum, weight decay, the averaging at the server, every
later round — is post-processing.

Accounting (:func:`plan`): example-level (ε, δ) under add/remove-one adjacency, with the
accountant DP-DM uses (:mod:`fedcond.privacy.accounting`, Opacus's PRV). Each image lives
at one client and only that client's steps touch it (parallel composition), so a client's
guarantee is every image's: with every client trained in every round (the conservative
case; ``fraction`` < 1 would only lower it) that is ``rounds x local_epochs x
steps_per_epoch`` subsampled Gaussian mechanisms at rate ``dp_sample_rate``, where a local
epoch is ``round(1 / dp_sample_rate)`` steps (one expected pass over the data). The noise
multiplier is solved for the target ε before any client works, and every client computes
the same plan from the run config itself rather than trusting a number from the server.

Why Opacus's parts (``GradSampleModule``, ``DPOptimizer``, ``ModuleValidator``) and not
``PrivacyEngine.make_private``: ``make_private`` derives the sampling rate from the
client's data loader (``1 / len(loader)``, i.e. from the private data's size) and
normalises by the expected batch ``q * n``, so the step's scale would depend on the private
size; here the rate and the normaliser are public settings, as DP-DM's ``iterate`` takes
its rate given. Its noise would come from a torch generator (MT19937, recoverable from
2^32 guesses); here the noise and the Poisson samples come from
:class:`fedcond.privacy.noise.SecretNoise` (operating-system entropy, never written).
The data augmentation of the shared recipe is applied per example before its gradient is
taken, with draws independent of the data, so it changes nothing in the analysis.

What the guarantee does not cover (docs/privacy.md): the choice of clip and learning rate
on the server's validation split, and a round redone after a crash (its steps would be
spent again).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedcond.errors import FedcondError
from fedcond.precision import autocast
from fedcond.privacy.accounting import PrivacySpend, calibrate
from fedcond.privacy.noise import SecretNoise
from fedcond.recipe import Recipe


@dataclass(frozen=True)
class DPSGDPlan:
    """What a DP-FedAvg run spends per example, fixed before any client works.

    Attributes:
        spend: the accountant's calibration (noise multiplier, ε achieved, steps, rate).
        clip: per-example gradient L2 bound.
        steps_per_epoch: Poisson-sampled steps of one local epoch (``round(1 / q)``).
        local_epochs, rounds: what the steps compose over.
        normalizer: the public constant the noisy gradient sum is divided by.
    """

    spend: PrivacySpend
    clip: float
    steps_per_epoch: int
    local_epochs: int
    rounds: int
    normalizer: int

    @property
    def steps_per_round(self) -> int:
        """DP-SGD steps a client takes in one round."""
        return self.local_epochs * self.steps_per_epoch

    def to_json(self) -> dict[str, Any]:
        """The record stored in results.json beside the run."""
        return {**self.spend.to_json(), "clip_norm": self.clip, "steps_per_epoch": self.steps_per_epoch,
                "local_epochs": self.local_epochs, "rounds": self.rounds, "normalizer": self.normalizer,
                "noise_std": self.spend.noise_multiplier * self.clip,
                "level": "example (each training image of each client)",
                "adjacency": "add or remove one training example",
                "composition": "rounds x local epochs x steps per epoch Poisson-subsampled Gaussian steps per client, "
                               "every client counted in every round; clients hold disjoint data (parallel)",
                "not_covered": "the choice of clip and learning rate on the validation split; a round redone after a "
                               "crash"}


def steps_per_epoch(sample_rate: float) -> int:
    """Steps of one local epoch at Poisson rate ``sample_rate``: one expected pass, ``round(1 / q)``."""
    return max(1, round(1.0 / sample_rate))


@functools.lru_cache(maxsize=32)
def _calibrated(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> PrivacySpend:
    """:func:`calibrate`, memoised apart from the clip: a grid over clips asks the accountant once."""
    return calibrate(epsilon, delta, sample_rate, steps, accountant)


@functools.lru_cache(maxsize=32)
def plan(epsilon: float, delta: float, sample_rate: float, rounds: int, local_epochs: int, clip: float,
         normalizer: int, accountant: str = "prv") -> DPSGDPlan:
    """Solve the noise multiplier for a target (ε, δ) over the whole run; a FedcondError
    (one line) when the settings cannot reach it or are out of range.

    Memoised: the server and every client of a process ask for the same plan.
    """
    if not epsilon > 0:
        raise FedcondError("dpfedavg needs --dp-epsilon > 0: it is the private FedAvg baseline")
    if not 0 < sample_rate <= 1:
        raise FedcondError(f"dpfedavg needs --dp-sample-rate in (0, 1], got {sample_rate}: each example's chance "
                           "to be in a local step's batch, a public setting (e.g. batch-size / a client's typical "
                           "size: 0.25 for digits at 10 clients, 0.006 for MNIST)")
    if not clip > 0 or not math.isfinite(clip):
        raise FedcondError(f"dpfedavg needs --dp-clip > 0 (the per-example gradient norm bound), got {clip}")
    if rounds < 1 or local_epochs < 1 or normalizer < 1:
        raise FedcondError("dpfedavg needs rounds, local epochs and batch size >= 1")
    per_epoch = steps_per_epoch(sample_rate)
    steps = rounds * local_epochs * per_epoch
    try:
        spend = _calibrated(epsilon, delta, sample_rate, steps, accountant)
    except FedcondError as err:
        raise FedcondError(f"dpfedavg: {err} ({rounds} rounds x {local_epochs} local epochs x {per_epoch} steps); "
                           "raise epsilon or lower rounds, local epochs or the sample rate") from None
    return DPSGDPlan(spend=spend, clip=float(clip), steps_per_epoch=per_epoch, local_epochs=local_epochs,
                     rounds=rounds, normalizer=normalizer)


def plan_for(cfg: Any) -> DPSGDPlan:
    """The plan of a run's config (a :class:`fedcond.federated.config.FederateConfig`)."""
    return plan(cfg.dp_epsilon, cfg.dp_delta, cfg.dp_sample_rate, cfg.effective_rounds, cfg.local_epochs,
                cfg.dp_clip, cfg.batch_size)


def check_model(model: nn.Module, name: str = "the model") -> None:
    """Refuse a network whose layers mix the examples of a batch (batch norm): per-example
    gradients would not be per example. Opacus's ModuleValidator would replace such layers,
    but the global model would then differ from the other strategies' (and its weights
    from the server's), so the user picks a network without them instead."""
    from opacus.validators import ModuleValidator  # Opacus: seconds to import, DP only

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise FedcondError(f"dpfedavg cannot train {name} with DP-SGD: {errors[0]}; use --model convnet "
                           "(instance norm) or convnet-nonorm")


def _secret_optimizer(optimizer: torch.optim.Optimizer, noise_multiplier: float, clip: float, normalizer: int,
                      noise: SecretNoise):
    """Opacus's DPOptimizer, with its Gaussian noise drawn from ``noise`` (see the module docstring)."""
    from opacus.optimizers.optimizer import (  # Opacus takes seconds to import; only DP-SGD needs it
        DPOptimizer,
        _check_processed_flag,
        _mark_as_processed,
    )

    class SecretDPOptimizer(DPOptimizer):
        def add_noise(self) -> None:
            std = self.noise_multiplier * self.max_grad_norm
            for p in self.params:
                _check_processed_flag(p.summed_grad)
                drawn = noise.gaussian(tuple(p.summed_grad.shape), std) if std > 0 else torch.zeros(())
                p.grad = (p.summed_grad + drawn.to(p.summed_grad)).view_as(p)
                _mark_as_processed(p.summed_grad)

    # loss_reduction "mean" here divides the noisy sum by expected_batch_size (public); the
    # per-example gradients come from a summed loss (GradSampleModule's "sum"), so no batch
    # size enters anywhere else.
    return SecretDPOptimizer(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=clip,
                             expected_batch_size=normalizer, loss_reduction="mean")


def dp_local_train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    dp: DPSGDPlan,
    lr: float,
    generator: torch.Generator,
    recipe: Recipe | None = None,
    precision: str = "float32",
    noise_multiplier: float | None = None,
) -> int:
    """DP-SGD local update of ``model`` in place: ``dp.steps_per_round`` steps, each on a
    secret Poisson sample of the images; returns the steps taken.

    SGD with the recipe's momentum and weight decay at a constant ``lr`` (the rounds are the
    schedule, as in :func:`fedcond.federated.client_training.local_train`) and the recipe's
    augmentation of every sampled image (its draws from ``generator``: data-independent,
    not secret). ``noise_multiplier`` overrides the plan's (tests: 0 without noise).
    Nothing about the data (no loss, no count) is returned: it would be outside the guarantee.
    """
    from opacus import GradSampleModule

    check_model(model)
    sigma = dp.spend.noise_multiplier if noise_multiplier is None else noise_multiplier
    recipe = recipe or Recipe()
    augment = recipe.augmenter(images.shape[1]) if images.dim() == 4 else None
    secret = SecretNoise()
    # Opacus's hooks cannot see through an in-place activation (autograd refuses it); off while
    # training, which changes no weight and no output.
    in_place = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in in_place:
        m.inplace = False
    # functorch's per-example gradients for every layer: Opacus's hook-based ones (its default)
    # gave the second convolution of the 8x8 digits ConvNet a per-example sum 0.035 away from
    # the batch gradient (functorch: 4e-8; tests/test_dp_fedavg.py checks the equivalence)
    gsm = GradSampleModule(model, loss_reduction="sum", force_functorch=True)
    base = torch.optim.SGD(model.parameters(), lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    opt = _secret_optimizer(base, sigma, dp.clip, dp.normalizer, secret)
    gsm.train()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        for _ in range(dp.steps_per_round):
            idx = secret.poisson_sample(images.shape[0], dp.spend.sample_rate).to(images.device)
            opt.zero_grad(set_to_none=True)
            if idx.numel() == 0:
                # an empty sample still takes its noisy step: skipping it would show that it was empty
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            else:
                x = images[idx] if augment is None else augment(images[idx], generator)
                with autocast(precision, images.device):
                    logits = gsm(x)
                loss = torch.nn.functional.cross_entropy(logits.float(), labels[idx], reduction="sum")
                with warnings.catch_warnings():  # the first layer's input needs no gradient: Opacus's hook says so
                    warnings.simplefilter("ignore", UserWarning)
                    loss.backward()
            opt.step()
    finally:
        gsm._close()  # hooks and per-example attributes off: the model goes back as a plain network
        for m in in_place:
            m.inplace = True
    return dp.steps_per_round
