"""The privacy audit: near-copies are found (and noise is not flagged), the membership
metrics mean what they say, real-init seeds are replayed, and ``fedcond audit`` gives its
verdicts and JSON keys."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fedcond.audit.membership import roc_auc, tpr_at_fpr
from fedcond.audit.memorisation import memorisation, pixels
from fedcond.audit.set_audit import AuditConfig, audit_set
from fedcond.cli import app
from fedcond.distill import get_distiller
from fedcond.evaluate import EvalConfig

runner = CliRunner()
QUICK = AuditConfig(runs=1, eval=EvalConfig(epochs=40), max_members=300, max_nonmembers=300)


@pytest.fixture(scope="module")
def px(digits):
    return pixels(digits.train_images, digits.mean, digits.std), pixels(digits.test_images, digits.mean, digits.std)


def test_verbatim_training_images_are_near_copies_and_noise_is_not(px):
    train, test = px
    copied = memorisation(train[:30], train, test)
    assert copied.near_copy_share == 1.0 and copied.significant()
    assert torch.equal(copied.nearest_train, torch.arange(30)) and float(copied.distance_to_train.max()) == 0
    noise = memorisation(torch.rand(30, train.shape[1], generator=torch.Generator().manual_seed(0)), train, test)
    assert noise.near_copy_share == 0.0 and not noise.significant()
    # Unseen real images are flagged at about the chosen rate, by construction.
    unseen = memorisation(test, train, test, quantile=0.05)
    assert 0.02 <= unseen.near_copy_share <= 0.08 and not unseen.significant()
    # Slightly perturbed copies are still near-copies.
    shaken = (train[:30] + 0.01 * torch.randn(30, train.shape[1], generator=torch.Generator().manual_seed(1))).clamp(
        0, 1
    )
    assert memorisation(shaken, train, test).near_copy_share == 1.0


def test_membership_metrics():
    members, nonmembers = torch.arange(100.0) + 1000, torch.arange(100.0)
    assert roc_auc(members, nonmembers) == 1.0 and tpr_at_fpr(members, nonmembers) == 1.0
    assert roc_auc(nonmembers, members) == 0.0 and tpr_at_fpr(nonmembers, members) == 0.0
    same = torch.zeros(50)
    assert roc_auc(same, same) == 0.5
    # One member scoring above every non-member: caught at 0 % false positives.
    assert tpr_at_fpr(torch.tensor([5.0, 0.5, 0.5, 0.5]), torch.arange(100.0) / 100) == 0.25


def test_real_init_seeds_are_replayed_and_the_start_is_all_near_copies(digits):
    dm = get_distiller("dm")
    start = dm.distill(digits, dm.config_class.from_dict({"ipc": 2, "iterations": 0}), torch.Generator().manual_seed(4))
    report = audit_set(start, digits, QUICK)
    syn = report.synthetic
    assert syn.seed_source.startswith("the real images that seeded")
    assert syn.memorisation.near_copy_share == 1.0 and report.leakage == "high"
    assert report.verdict.startswith("LEAKS") and report.random_real is not None
    # The replayed seeds are exactly the set's images.
    seeds = syn.memorisation.nearest_train
    assert torch.equal(digits.train_images[seeds], start.images)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    for name, args in (("dm", ["--method", "dm", "-n", "10"]), ("random", ["--method", "random"]),
                       ("dp", ["--method", "dp-dm", "--epsilon", "1", "-n", "30", "-o", "bank_size=4"])):
        result = runner.invoke(app, ["distill", "--dataset", "digits", "--ipc", "10", "--out", str(out / name), *args])
        assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("name,verdict", [("dm", "LEAKS"), ("random", "LEAKS"), ("dp", "NO MEASURABLE LEAKAGE")])
def test_cli_verdicts_json_keys_and_pairs_picture(sets, name, verdict, tmp_path):
    out = tmp_path / "audit.json"
    result = runner.invoke(app, ["audit", str(sets / name / "synthetic.safetensors"), "--dataset", "digits",
                                 "--runs", "1", "--epochs", "40", "--max-members", "300", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert verdict in result.stdout
    data = json.loads(out.read_text())
    assert data["verdict"].startswith(verdict)
    for key in ("near_copy_share", "membership_auc", "membership_tpr_at_1pct_fpr", "random_real_membership_auc",
                "random_real_near_copy_share", "test_accuracy_mean", "record"):
        assert key in data
    assert data["random_real_near_copy_share"] == 1.0
    # The AUCs to compare between two sets are those on the same members, the random training images.
    assert data["membership_auc_all_members"] == data["synthetic"]["membership_auc_all_members"]
    assert data["random_real_membership_auc_all_members"] == data["random_real"]["membership_auc_all_members"]
    assert "on the same random training images" in data["verdict"]
    if name == "dp":
        assert data["near_copy_share"] == 0.0 and data["epsilon"] <= 1.0
        assert data["synthetic"]["membership_auc_seed_members"] is None  # noise start: no seed group
        real = data["random_real"]
        assert real["membership_auc_seed_members"] > real["membership_auc_all_members"]  # its own images leak
    else:
        assert data["near_copy_share"] >= 0.2  # DM from real images after 10 iterations: still copies
    png = (tmp_path / "audit_pairs.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # The audit shows real training images: its JSON and a note beside its files say so.
    assert data["contains_training_data"] is True and "not for release" in data["not_for_release"]
    note = (tmp_path / "AUDIT_CONTAINS_TRAINING_DATA.txt").read_text()
    assert "not for release" in note and "audit.json" in note and "audit_pairs.png" in note


def test_audit_user_errors_are_one_line(sets, tmp_path):
    for args, message in (
        (["audit", str(tmp_path / "none.safetensors"), "--dataset", "digits"], "no such"),
        (["audit", str(sets / "dp" / "synthetic.safetensors"), "--dataset", "digits", "--runs", "0"], "runs"),
        (
            ["audit", str(sets / "dp" / "synthetic.safetensors"), "--dataset", "digits", "--near-copy-quantile", "2"],
            "quantile",
        ),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
