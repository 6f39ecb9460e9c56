"""The canary audit: the one-run bound is the paper's, a canary a set keeps scores highest,
a leaky set (DM from real images) gets a bound above 1 and above a DP set's, which stays
below its stated epsilon, and ``fedcond audit --canary-method`` writes the bound."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from fedcond.audit.canary import CanaryConfig, canary_audit, canary_scores
from fedcond.audit.one_run import epsilon_lower_bound, p_value
from fedcond.cli import app
from fedcond.distill import make_distiller
from fedcond.errors import FedcondError
from fedcond.synthetic import SyntheticSet

runner = CliRunner()


def test_all_guesses_right_give_the_randomised_response_bound():
    # Pure DP: P[Bin(r, q) >= r] = q^r, so r right out of r rejects every eps with q^r < beta.
    for r in (10, 50, 100):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(math.log(q / (1 - q)), abs=1e-5)
    # Delta only weakens the bound; half right proves nothing; more confidence proves less.
    assert epsilon_lower_bound(1000, 100, 100, 1e-5) < epsilon_lower_bound(1000, 100, 100, 0.0)
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 100, 100, 1e-5, 0.99) < epsilon_lower_bound(1000, 100, 100, 1e-5, 0.95)
    # The p-value falls as the null hypothesis' epsilon does, and the delta term grows with m.
    assert p_value(1000, 100, 80, 1.0, 1e-5) > p_value(1000, 100, 80, 0.5, 1e-5)
    assert p_value(10_000, 100, 80, 1.0, 1e-5) > p_value(1000, 100, 80, 1.0, 1e-5)


def test_a_canary_the_set_started_from_scores_highest(digits):
    labels = digits.train_labels
    threes, fours = torch.nonzero(labels == 3).flatten()[:4], torch.nonzero(labels == 4).flatten()[:2]
    idx = torch.cat([threes, fours])
    images = digits.train_images[idx]
    # The set: canary 0 moved a little (a distilled image that started from it), nothing of class 4.
    moved = images[:1] + 0.05 * torch.randn(1, *images.shape[1:], generator=torch.Generator().manual_seed(0))
    sset = SyntheticSet(images=moved, labels=torch.tensor([3]), classes=digits.classes, mean=digits.mean,
                        std=digits.std, method="dm", ipc=1, dataset="digits", seed=0, config={})
    scores = canary_scores(sset, images, labels[idx], digits.mean, digits.std)
    assert -0.1 < float(scores[0]) < 0  # claimed by the synthetic image: first
    assert bool((scores[1:4] < -1).all())  # the other threes: after every claimed canary
    assert bool((scores[4:] == -math.inf).all())  # no synthetic four to compare with


def _audit(data, method, iterations, ipc=5, **options):
    distiller, config = make_distiller(method, {"ipc": ipc, "iterations": iterations, **options})
    audit, sset = canary_audit(data, distiller, config, CanaryConfig(canaries=400, seed=1))
    return audit.to_json(), sset


def test_a_leaky_set_is_caught_and_a_dp_set_stays_below_its_epsilon(digits_public):
    leaky, _ = _audit(digits_public, "dm", 5, ipc=10, init="real")  # 100 images started from canaries
    private, sset = _audit(digits_public, "dp-dm", 20, epsilon=1.0, bank_size=2, min_class_size=0)
    assert sset.config["privacy"]["epsilon"] <= 1.0 and private["stated_epsilon"] == sset.config["privacy"]["epsilon"]
    assert leaky["empirical_epsilon_lower_bound"] > 1.0, leaky["guesses"]
    assert private["empirical_epsilon_lower_bound"] <= private["stated_epsilon"], private["guesses"]
    assert leaky["empirical_epsilon_lower_bound"] > private["empirical_epsilon_lower_bound"]
    assert leaky["confidence"] == 0.95 and leaky["canaries"] == 400 and 150 < leaky["canaries_included"] < 250
    assert leaky["empirical_epsilon_lower_bound"] <= leaky["largest_provable_bound"]


def test_cli_writes_the_bound_and_refuses_what_it_cannot_do(tmp_path):
    out = tmp_path / "canary.json"
    result = runner.invoke(app, ["audit", "--dataset", "digits", "--canary-method", "dm", "--canaries", "300",
                                 "--ipc", "3", "-n", "2", "-o", "init=real", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "empirical epsilon lower bound" in result.stdout
    data = json.loads(out.read_text())
    assert data["empirical_epsilon_lower_bound"] > 0 and data["confidence"] == 0.95 and data["stated_epsilon"] is None
    assert data["method"] == "dm" and data["method_config"]["init"] == "real" and "record" in data
    for args, message in ((["x.safetensors", "--canary-method", "dm"], "not both"),
                          ([], "nothing to audit"),
                          (["--canary-method", "dm", "--epsilon", "1"], "DP method"),
                          (["--canary-method", "dp-dm", "--normalize", "train"], "normalisation"),
                          (["--canary-method", "dm", "--confidence", "1.5"], "confidence"),
                          (["--canary-method", "dm", "--canaries", "5000"], "training images")):
        result = runner.invoke(app, ["audit", "--dataset", "digits", *args])
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.strip().startswith("error: ") and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def test_bad_canary_settings_are_user_errors():
    for options, message in (({"canaries": 1}, "canaries"), ({"confidence": 0}, "confidence"),
                             ({"guesses": (0,)}, "guesses"), ({"delta": 1.0}, "delta")):
        with pytest.raises(FedcondError, match=message):
            CanaryConfig(**options)
