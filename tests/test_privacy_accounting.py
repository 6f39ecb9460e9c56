"""DP building blocks: per-example clipping bounds every contribution, the Gaussian release
adds noise of the stated size, and the accountant's numbers are the library's (and, for one
release, the exact analytic Gaussian mechanism's)."""

import math
import pickle

import pytest
import torch
from scipy.stats import norm

from fedcond.errors import FedcondError
from fedcond.privacy.accounting import calibrate, epsilon_for, replace_one_spend
from fedcond.privacy.mechanism import add_noise, class_sums, clip_rows, noisy_means, replace_sensitivity, sensitivity
from fedcond.privacy.noise import SecretNoise


def test_clip_rows_bounds_long_rows_and_keeps_short_ones():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = clip_rows(x, 1.0)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], x[1]) and torch.equal(out[2], x[2])


def test_clipping_bounds_every_examples_contribution_to_the_release():
    gen = torch.Generator().manual_seed(0)
    # Wildly different norms, some far above the bound: the outliers clipping must tame.
    feats = torch.randn(50, 7, generator=gen) * torch.logspace(-2, 4, 50).unsqueeze(1)
    labels = torch.randint(0, 3, (50,), generator=gen)
    clip, weight = 2.0, 0.5
    full = class_sums(feats, labels, 3, clip, weight)
    bound = sensitivity(clip, weight)
    assert bound == pytest.approx(2.0 * math.sqrt(1.25))
    for i in range(50):
        keep = torch.arange(50) != i
        without = class_sums(feats[keep], labels[keep], 3, clip, weight)
        assert float((full - without).norm()) <= bound + 1e-4
    # The bound is tight: an example far above it contributes exactly the sensitivity.
    i = int(feats.norm(dim=1).argmax())
    keep = torch.arange(50) != i
    assert float((full - class_sums(feats[keep], labels[keep], 3, clip, weight)).norm()) == pytest.approx(
        bound, rel=1e-4
    )
    # The size coordinate counts the examples of each class.
    sizes = noisy_means(full, clip, weight)[1]
    assert torch.allclose(sizes, torch.bincount(labels, minlength=3).float())


def test_noise_has_the_stated_std_and_is_fresh_every_time():
    sums = torch.zeros(200, 500)
    a = add_noise(sums, 2.0, 1.5, SecretNoise())
    b = add_noise(sums, 2.0, 1.5, SecretNoise())
    assert not torch.equal(a, b) and a.dtype == sums.dtype
    # The noise is secret, so unseeded: bounds at six standard errors fail about once in 10^9
    # runs, yet a wrong std (2.0 or 1.5 alone) or any bias of a tenth of the std does not pass.
    n = sums.numel()
    assert abs(float(a.std()) - 3.0) < 6 * 3.0 / math.sqrt(2 * n)
    assert abs(float(a.mean())) < 6 * 3.0 / math.sqrt(n)
    # One generator's draws continue (no repeat); none can be seeded, pickled or read back.
    noise = SecretNoise()
    assert not torch.equal(noise.gaussian((100,), 1.0), noise.gaussian((100,), 1.0))
    with pytest.raises(TypeError):
        pickle.dumps(noise)
    assert not hasattr(noise, "state_dict") and not hasattr(noise, "__dict__")


def test_poisson_sample_has_the_stated_rate():
    picked = SecretNoise().poisson_sample(100_000, 0.1)
    assert 9_500 < picked.numel() < 10_500 and picked.unique().numel() == picked.numel()
    assert torch.equal(SecretNoise().poisson_sample(7, 1.0), torch.arange(7))


def test_replace_one_costs_a_larger_sensitivity_and_group_privacy():
    clip, weight = 1.0, 0.5
    # Within one class the replaced embeddings can point opposite ways: 2 * clip.
    assert replace_sensitivity(clip, weight) == 2.0
    assert replace_sensitivity(clip, 2.0) == pytest.approx(math.sqrt(2 * 5))  # a heavy count weight: two rows
    spend = calibrate(1.0, 1e-5, 1.0, 1)
    out = replace_one_spend(spend, sensitivity(clip, weight), replace_sensitivity(clip, weight))
    assert out["group_privacy_epsilon"] == pytest.approx(2 * spend.epsilon)
    assert out["group_privacy_delta"] == pytest.approx((1 + math.exp(spend.epsilon)) * 1e-5)
    # The plain Gaussian mechanism at sensitivity 2 instead of 1.118: epsilon at the same delta.
    assert out["epsilon"] == pytest.approx(epsilon_for(spend.noise_multiplier / (2 / 1.118034), 1.0, 1, 1e-5), rel=1e-3)
    assert spend.epsilon < out["epsilon"] < out["group_privacy_epsilon"]
    sampled = calibrate(1.0, 1e-5, 0.1, 10)
    assert replace_one_spend(sampled, 1.118, 2.0)["epsilon"] is None  # subsampled: group privacy only


def test_epsilon_matches_opacus_for_a_known_setting():
    from opacus.accountants import PRVAccountant, RDPAccountant

    # DP-SGD on MNIST as in Abadi et al.: sigma 1.1, batch 256 of 60,000, 15 epochs.
    sigma, q, steps, delta = 1.1, 256 / 60000, 15 * 60000 // 256, 1e-5
    for name, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        acc = cls()
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
        assert epsilon_for(sigma, q, steps, delta, name) == pytest.approx(acc.get_epsilon(delta=delta), rel=1e-6)
    # Subsampling and fewer steps cost less; more noise costs less.
    assert epsilon_for(sigma, q, steps, delta, "rdp") < epsilon_for(sigma, 1.0, steps, delta, "rdp")
    assert epsilon_for(2.0, q, steps, delta) < epsilon_for(1.0, q, steps, delta)


def _analytic_gaussian_delta(eps: float, sigma: float) -> float:
    """Balle & Wang (2018), Theorem 8: the exact delta of one Gaussian release at epsilon."""
    return norm.cdf(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * norm.cdf(-1 / (2 * sigma) - eps * sigma)


def test_one_release_is_accounted_as_the_exact_gaussian_mechanism():
    spend = calibrate(1.0, 1e-5, 1.0, 1, "prv")
    assert spend.epsilon <= 1.0 and spend.noise_multiplier == pytest.approx(3.79, abs=0.02)
    # The guarantee holds (the exact delta at the reported epsilon is at most 1e-5) and is
    # nearly tight (PRV's discretisation errs on the safe side by a little).
    assert 0.5e-5 < _analytic_gaussian_delta(spend.epsilon, spend.noise_multiplier) <= 1e-5
    # RDP is a valid but looser bound: it needs more noise for the same target.
    assert calibrate(1.0, 1e-5, 1.0, 1, "rdp").noise_multiplier > spend.noise_multiplier


def test_accounting_rejects_impossible_settings():
    with pytest.raises(FedcondError, match="delta"):
        epsilon_for(1.0, 0.1, 10, 0.0)
    with pytest.raises(FedcondError, match="sample rate"):
        calibrate(1.0, 1e-5, 1.5, 10)
    with pytest.raises(FedcondError, match="accountant"):
        calibrate(1.0, 1e-5, 0.1, 10, "moments")
