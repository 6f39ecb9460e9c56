"""The white-box canary audit: it reads what DP-DM released (a noiseless release is exactly
the kept canaries' sum), catches DP-DM with its noise switched off and at epsilon 100 (a
bound clearly above 1), never exceeds a stated epsilon of 1, and reports each attack's own
ceiling; ``fedcond audit --attack`` chooses the headline score."""

import json
from contextlib import nullcontext
from unittest import mock

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedcond.audit.canary import CanaryConfig, attack_ceiling, canary_audit, crafted_canaries
from fedcond.audit.whitebox import canary_vectors, dp_dm_release
from fedcond.cli import app
from fedcond.distill import make_distiller
from fedcond.errors import FedcondError
from fedcond.privacy.noise import SecretNoise

runner = CliRunner()
SMALL = {"bank_size": 2, "min_class_size": 0}  # two networks: fast, and enough to decode 400 canaries


def no_noise():
    """DP-DM's mechanism broken on purpose: its Gaussian noise is zeros."""
    zeros = lambda self, shape, std: torch.zeros(shape, dtype=torch.float64)
    return mock.patch.object(SecretNoise, "gaussian", zeros)


def audit(data, epsilon, crafted=False, broken=False, attack="auto", canaries=400, seed=1):
    distiller, config = make_distiller("dp-dm", {"ipc": 2, "iterations": 1, "epsilon": epsilon, **SMALL})
    with no_noise() if broken else nullcontext():
        result, _ = canary_audit(data, distiller, config, CanaryConfig(canaries=canaries, seed=seed, crafted=crafted,
                                                                      attack=attack))
    return result.to_json()


def test_the_release_read_back_is_the_kept_canaries_sum(digits_public):
    # With the noise off, the release the audit reads (checkpoint + bank rebuilt from the seed)
    # is exactly the per-class sum of the kept examples' vectors in the audit's own space.
    distiller, config = make_distiller("dp-dm", {"ipc": 2, "iterations": 1, **SMALL})
    train = digits_public.subset(torch.arange(60))
    with no_noise():
        sset, release = dp_dm_release(digits_public, distiller, config, train, seed=3)
    u = canary_vectors(release, train.train_images, train.train_labels)
    sums = torch.zeros_like(release.sums).index_add_(0, train.train_labels, u)
    assert torch.allclose(release.sums, sums, atol=1e-5)
    assert sset.config["privacy"]["epsilon"] <= 10


def test_a_broken_mechanism_and_epsilon_100_are_caught(digits_public):
    broken = audit(digits_public, 1.0, broken=True)
    assert broken["attack"] == "whitebox" and broken["stated_epsilon"] <= 1.0
    assert broken["empirical_epsilon_lower_bound"] > 2.0, broken["guesses"]  # stated 1: the audit refutes it
    assert broken["empirical_epsilon_lower_bound"] <= broken["attack_ceiling"] <= broken["largest_provable_bound"]
    # The pixel attack cannot see it: it sees copying only, and can single out at most one canary per image.
    black = broken["attacks"]["blackbox"]
    assert black["epsilon_lower_bound"] < 1.0 and black["ceiling_guesses"] <= 20
    assert black["ceiling"] < broken["attack_ceiling"]
    loose = audit(digits_public, 100.0, crafted=True)
    assert loose["stated_epsilon"] == pytest.approx(100, rel=0.01)
    assert loose["empirical_epsilon_lower_bound"] > 1.5, loose["guesses"]
    assert "crafted" in loose["canary_kind"]


@pytest.mark.parametrize("crafted", [False, True])
def test_epsilon_1_is_never_exceeded(digits_public, crafted):
    for seed in (0, 1):
        result = audit(digits_public, 1.0, crafted=crafted, seed=seed)
        stated = result["stated_epsilon"]
        for name, attack in result["attacks"].items():
            assert attack["epsilon_lower_bound"] <= stated, (name, attack["guesses"])


def test_ceilings_and_choices():
    config = CanaryConfig(canaries=1000)
    # The pixel attack at IPC 10 singles out at most 100 canaries: 2.94, not the grid's 4.57.
    assert attack_ceiling(1000, 100, config) == pytest.approx(2.94, abs=0.01)
    assert attack_ceiling(1000, 1000, config) == pytest.approx(4.57, abs=0.01)
    with pytest.raises(FedcondError, match="--attack"):
        CanaryConfig(attack="pixels")


def test_crafted_canaries_are_valid_images_spread_over_the_classes(digits_public):
    images, labels = crafted_canaries(digits_public, 50, np.random.default_rng(0))
    assert images.shape == (50, 1, 8, 8) and float(images.min()) >= -1 and float(images.max()) <= 1  # [0, 1] pixels
    assert torch.bincount(labels, minlength=10).tolist() == [5] * 10


def test_cli_chooses_the_attack_and_reports_every_one(tmp_path):
    out = tmp_path / "canary.json"
    result = runner.invoke(app, ["audit", "--dataset", "digits", "--canary-method", "dp-dm", "--canaries", "200",
                                 "--ipc", "1", "-n", "1", "-o", "bank_size=1", "-o", "min_class_size=0",
                                 "--epsilon", "1", "--attack", "blackbox", "--crafted", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["attack"] == "blackbox" and set(data["attacks"]) == {"blackbox", "whitebox", "whitebox-inner"}
    assert data["empirical_epsilon_lower_bound"] == data["attacks"]["blackbox"]["epsilon_lower_bound"]
    assert data["attack_ceiling"] == data["attacks"]["blackbox"]["ceiling"] <= data["largest_provable_bound"]
    refused = runner.invoke(app, ["audit", "--dataset", "digits", "--canary-method", "dm", "--attack", "whitebox"])
    assert refused.exit_code == 2 and "does not expose" in refused.stderr
