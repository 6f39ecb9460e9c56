"""DP-DM: the guarantee is recorded, the set learns, real-image starts are refused, both
mechanisms run, and the set's shape does not depend on the private data."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fedcond.cli import app
from fedcond.distill import get_distiller
from fedcond.errors import FedcondError
from fedcond.evaluate import EvalConfig, evaluate_synthetic
from fedcond.synthetic import SyntheticSet


def distill(data, seed=0, callbacks=None, **options):
    d = get_distiller("dp-dm")
    options = {"ipc": 2, "iterations": 5, "bank_size": 2, "noise_seed": 0, **options}  # fixed noise: repeatable
    return d.distill(data, d.config_class.from_dict(options),
                     torch.Generator().manual_seed(seed), callbacks=callbacks)


def test_cli_run_records_its_epsilon_in_run_json_and_the_set(tmp_path):
    out = tmp_path / "dp"
    result = CliRunner().invoke(
        app,
        [
            "distill",
            "--dataset",
            "digits",
            "--method",
            "dp-dm",
            "--epsilon",
            "3",
            "--delta",
            "1e-6",
            "--ipc",
            "1",
            "-n",
            "3",
            "-o",
            "bank_size=2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    assert 2.9 < record["epsilon"] <= 3.0
    privacy = record["privacy"]
    assert privacy["delta"] == 1e-6 and privacy["noise_multiplier"] > 0 and privacy["clip_norm"] == 1.0
    assert privacy["noise_std"] == pytest.approx(privacy["noise_multiplier"] * privacy["sensitivity"])
    assert privacy["mechanism"] == "release" and privacy["steps"] == 1 and privacy["sample_rate"] == 1.0
    back = SyntheticSet.load(out / "synthetic.safetensors")
    assert back.method == "dp-dm" and back.config["privacy"] == privacy


def test_noise_is_secret_by_default_and_a_resumed_run_reuses_it(digits, tmp_path):
    # The run's seed is public (it is in the set): the noise must not follow from it.
    a, b = distill(digits, noise_seed=-1), distill(digits, noise_seed=-1)
    assert not torch.equal(a.images, b.images) and a.config["privacy"]["noise_seed"] == "secret"
    fixed = distill(digits), distill(digits)
    assert torch.equal(fixed[0].images, fixed[1].images) and "fixed" in fixed[0].config["privacy"]["noise_seed"]
    # A killed run continued from its checkpoint ends as if never stopped: the same secret
    # noise (one release, not two), read back from the checkpoint.
    for mechanism in ("release", "iterate"):
        folder = tmp_path / mechanism
        opts = {"mechanism": mechanism, "iterations": 8, "checkpoint_every": 2, "log_every": 2}
        with pytest.raises(_Killed):
            distill(digits, noise_seed=-1, checkpoint_dir=str(folder), callbacks=[_kill_at(4)], **opts)
        secret = int(torch.load(folder / "checkpoint.pt", weights_only=True)["method_state"]["seed"])
        resumed = distill(digits, noise_seed=-1, checkpoint_dir=str(folder), **opts)
        straight = distill(digits, noise_seed=secret, **opts)
        assert torch.equal(resumed.images, straight.images), mechanism
    # Iterate mode's noise depends on the number of iterations: a longer resume is refused.
    with pytest.raises(FedcondError, match="calibrated for 8 iterations"):
        distill(digits, mechanism="iterate", iterations=12, noise_seed=-1, checkpoint_dir=str(tmp_path / "iterate"))


class _Killed(Exception):
    pass


def _kill_at(iteration):
    def callback(i, total, metrics):
        if i == iteration:
            raise _Killed
    return callback


def test_real_image_start_zca_and_bad_budgets_are_refused(digits):
    for options, message in (({"init": "real"}, "starts from noise"), ({"zca": True}, "zca"),
                             ({"epsilon": 0}, "epsilon"), ({"delta": 1.0}, "delta"),
                             ({"mechanism": "once"}, "mechanism")):
        with pytest.raises(FedcondError, match=message):
            distill(digits, **options)


def test_iterate_mechanism_accounts_every_iteration(digits):
    sset = distill(digits, mechanism="iterate", iterations=4, sample_rate=0.05, epsilon=5.0)
    p = sset.config["privacy"]
    assert p["mechanism"] == "iterate" and p["steps"] == 4 and p["sample_rate"] == 0.05 and p["epsilon"] <= 5.0
    assert p["bank_size"] is None and sset.class_counts() == [2] * 10
    # More steps of the same mechanism need more noise for the same epsilon.
    longer = distill(digits, mechanism="iterate", iterations=40, sample_rate=0.05, epsilon=5.0)
    assert longer.config["privacy"]["noise_multiplier"] > p["noise_multiplier"]


def test_release_on_a_poisson_sample_is_accounted_with_amplification(digits):
    full = distill(digits, epsilon=1.0).config["privacy"]
    sampled = distill(digits, epsilon=1.0, sample_rate=0.2).config["privacy"]
    assert sampled["sample_rate"] == 0.2 and sampled["steps"] == 1 and sampled["epsilon"] <= 1.0
    assert sampled["noise_multiplier"] < 0.5 * full["noise_multiplier"]  # 1.64 vs 3.79
    # Class sizes are estimated for the whole data (about 135 digits per class).
    assert all(60 < s < 220 for s in sampled["noisy_class_sizes"])


def test_every_present_class_gets_ipc_images_and_absent_ones_none(digits):
    # min(ipc, count) would reveal a class's size; DP-DM gives every class it keeps ipc
    # images, and drops classes whose noisy size is below three noise std.
    labels = digits.train_labels
    idx = torch.cat([torch.nonzero(labels == 2).flatten(), torch.nonzero(labels == 7).flatten()[:3]])
    sset = distill(digits.subset(idx), ipc=4, epsilon=10.0)
    assert sset.class_counts() == [0, 0, 4] + [0] * 7
    assert sset.config["privacy"]["dropped_classes"] == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert sset.config["present_classes"] == [2]


def test_dp_dm_beats_random_noise_by_a_wide_margin(digits):
    # Measured on digits IPC10, 200 iterations, 300 epochs: 0.928 at epsilon 10, 0.819 at 1.
    config = EvalConfig(epochs=150)
    dp = distill(digits, ipc=5, iterations=60, bank_size=16, epsilon=10.0)
    noise = distill(digits, ipc=5, iterations=0, bank_size=1, epsilon=10.0)  # the noise it starts from
    dp_acc = evaluate_synthetic(dp, digits, config, runs=1).mean
    noise_acc = evaluate_synthetic(noise, digits, config, runs=1).mean
    assert dp_acc > noise_acc + 0.4, (dp_acc, noise_acc)
    assert dp_acc > 0.7, dp_acc
