"""DP-DM: the guarantee is recorded, the noise is secret and never written, a resume reuses
the release and checks the data, private normalisation and seeds are refused, both
mechanisms run, and the set's shape does not depend on the private data."""

import json
import random
import types

import pytest
import torch
from typer.testing import CliRunner

import fedcond.privacy.noise as noise_module
from fedcond.cli import app
from fedcond.distill import get_distiller, make_distiller
from fedcond.errors import FedcondError
from fedcond.evaluate import EvalConfig, evaluate_synthetic
from fedcond.synthetic import SyntheticSet

runner = CliRunner()


def distill(data, seed=0, callbacks=None, **options):
    d = get_distiller("dp-dm")
    options = {"ipc": 2, "iterations": 5, "bank_size": 2, **options}
    return d.distill(data, d.config_class.from_dict(options), torch.Generator().manual_seed(seed), callbacks=callbacks)


def cli_distill(out, *args):
    result = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "dp-dm", "--ipc", "1", "-n", "3",
                                 "-o", "bank_size=2", "--seed", "0", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / "run.json").read_text())


def test_cli_run_records_its_epsilon_and_adjacency_in_run_json_and_the_set(tmp_path):
    record = cli_distill(tmp_path / "dp", "--epsilon", "3", "--delta", "1e-6")
    assert 2.9 < record["epsilon"] <= 3.0
    privacy = record["privacy"]
    assert privacy["delta"] == 1e-6 and privacy["noise_multiplier"] > 0 and privacy["clip_norm"] == 1.0
    assert privacy["noise_std"] == pytest.approx(privacy["noise_multiplier"] * privacy["sensitivity"])
    assert privacy["mechanism"] == "release" and privacy["steps"] == 1 and privacy["sample_rate"] == 1.0
    # Add/remove-one, and what replacing one example costs (a larger sensitivity, a larger epsilon).
    assert record["adjacency"] == privacy["adjacency"] == "add or remove one training example"
    replace = privacy["replace_one"]
    assert replace["sensitivity"] > privacy["sensitivity"] and replace["epsilon"] > privacy["epsilon"]
    assert replace["group_privacy_epsilon"] == pytest.approx(2 * privacy["epsilon"])
    # The data were normalised with public constants, and nothing that grows with their size is recorded.
    assert privacy["normalization"] == "public"
    assert "wall_time_s" not in record and "peak_memory_bytes" not in record
    back = SyntheticSet.load(tmp_path / "dp" / "synthetic.safetensors")
    assert back.method == "dp-dm" and back.config["privacy"] == privacy and back.mean == (0.5,)


def test_the_same_seed_twice_gives_different_noise(tmp_path):
    # The run's seed is public (it is in the set): the noise must not follow from it.
    a, b = cli_distill(tmp_path / "a"), cli_distill(tmp_path / "b")
    assert a["seed"] == b["seed"] == 0
    assert a["privacy"]["noisy_class_sizes"] != b["privacy"]["noisy_class_sizes"]


def _known_entropy(monkeypatch):
    """Replace the operating-system entropy by known numbers, to look for them in the outputs."""
    drawn, known = [], random.Random(2023)

    def randbits(bits):
        value = known.getrandbits(bits) | 1 << (bits - 1)  # every 64-bit word of it looks random
        drawn.append((value, bits))
        return value

    monkeypatch.setattr(noise_module, "secrets", types.SimpleNamespace(randbits=randbits))
    return drawn


@pytest.mark.parametrize("mechanism", ["release", "iterate"])
def test_no_file_under_out_holds_the_noise_key_or_generator_state(tmp_path, monkeypatch, mechanism):
    drawn = _known_entropy(monkeypatch)
    out = tmp_path / mechanism
    cli_distill(out, "-o", f"mechanism={mechanism}", "-o", "sample_rate=0.5")
    assert drawn, "the noise did not come from fedcond.privacy.noise"
    needles = []
    for value, bits in drawn:
        raw = value.to_bytes(bits // 8, "little")
        needles += [raw[i : i + 8] for i in range(0, len(raw), 8)]  # each 64-bit word, as arrays store them
        needles += [str(value).encode(), hex(value).encode()]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "checkpoint.pt" for p in files) and len(files) >= 4
    for path in files:
        content = path.read_bytes()
        assert not any(needle in content for needle in needles), f"{path} holds the noise's key"
        assert b"noise_seed" not in content
    state = torch.load(out / "checkpoints" / "checkpoint.pt", weights_only=True)["method_state"]
    assert set(state) == {"means", "sizes", "size_sum", "steps", "planned_steps"}


class _Killed(Exception):
    pass


def _kill_at(iteration):
    def callback(i, total, metrics):
        if i == iteration:
            raise _Killed
    return callback


def test_a_resumed_run_reuses_the_checkpointed_release(digits_public, tmp_path):
    folder = tmp_path / "release"
    opts = {"iterations": 8, "checkpoint_every": 100, "log_every": 1, "checkpoint_dir": str(folder)}
    with pytest.raises(_Killed):  # killed at the first progress line, long before a periodic checkpoint
        distill(digits_public, callbacks=[_kill_at(1)], **opts)
    saved = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert saved["iteration"] == 0  # the release was written before anything derived from it was shown
    resumed = distill(digits_public, **opts)
    released = [round(float(s), 1) for s in saved["method_state"]["sizes"]]
    assert resumed.config["privacy"]["noisy_class_sizes"] == released
    # Rerun once finished: the same set, not a second release.
    again = distill(digits_public, **opts)
    assert torch.equal(again.images, resumed.images)
    assert again.config["privacy"]["noisy_class_sizes"] == resumed.config["privacy"]["noisy_class_sizes"]
    # A straight run of the same seed draws other noise.
    straight = distill(digits_public, iterations=8)
    assert straight.config["privacy"]["noisy_class_sizes"] != resumed.config["privacy"]["noisy_class_sizes"]


def test_iterate_resumes_its_steps_and_refuses_another_length(digits_public, tmp_path):
    folder = tmp_path / "iterate"
    opts = {"mechanism": "iterate", "sample_rate": 0.2, "iterations": 8, "checkpoint_every": 5, "log_every": 2,
            "checkpoint_dir": str(folder)}
    with pytest.raises(_Killed):
        distill(digits_public, callbacks=[_kill_at(4)], **opts)
    # Checkpointed at every progress line (gcd of 5 and 2), so the step whose loss was shown is kept.
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["method_state"]["steps"] == 4
    resumed = distill(digits_public, **opts)
    assert resumed.config["privacy"]["steps"] == 8 and resumed.config["checkpoint_every"] == 5
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["method_state"]["steps"] == 8
    with pytest.raises(FedcondError, match="calibrated for 8 iterations"):
        distill(digits_public, **{**opts, "iterations": 12})


def test_a_resume_on_other_data_is_refused(digits_public, tmp_path):
    opts = {"iterations": 2, "checkpoint_dir": str(tmp_path / "ckpt")}
    distill(digits_public.subset(torch.arange(600)), **opts)
    edited = digits_public.subset(torch.arange(1, 601))  # same name, same size, other images
    with pytest.raises(FedcondError, match="other training data"):
        distill(edited, **opts)
    distill(digits_public.subset(torch.arange(600)), **opts)  # the same data resume


def test_private_normalisation_seeds_and_computed_sample_rates_are_refused(digits, tmp_path):
    with pytest.raises(FedcondError, match="computed from the private training images"):
        distill(digits)  # digits' default mean/std come from its training images
    result = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "dp-dm", "--normalize", "train",
                                 "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: ") and "normalisation" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(FedcondError, match="noise_seed is refused"):
        make_distiller("dp-dm", {"ipc": 1, "noise_seed": 0})
    with pytest.raises(FedcondError, match="sampling rate given"):
        make_distiller("dp-dm", {"ipc": 1, "mechanism": "iterate"})


def test_real_image_start_zca_and_bad_budgets_are_refused(digits_public):
    for options, message in (({"init": "real"}, "starts from noise"), ({"zca": True}, "zca"),
                             ({"epsilon": 0}, "epsilon"), ({"delta": 1.0}, "delta"),
                             ({"mechanism": "once"}, "mechanism")):
        with pytest.raises(FedcondError, match=message):
            distill(digits_public, **options)


def test_iterate_mechanism_accounts_every_iteration(digits_public):
    sset = distill(digits_public, mechanism="iterate", iterations=4, sample_rate=0.05, epsilon=5.0)
    p = sset.config["privacy"]
    assert p["mechanism"] == "iterate" and p["steps"] == 4 and p["sample_rate"] == 0.05 and p["epsilon"] <= 5.0
    assert p["bank_size"] is None and sset.class_counts() == [2] * 10
    assert p["replace_one"]["epsilon"] is None  # subsampled: only group privacy is stated
    # More steps of the same mechanism need more noise for the same epsilon.
    longer = distill(digits_public, mechanism="iterate", iterations=40, sample_rate=0.05, epsilon=5.0)
    assert longer.config["privacy"]["noise_multiplier"] > p["noise_multiplier"]


def test_release_on_a_poisson_sample_is_accounted_with_amplification(digits_public):
    full = distill(digits_public, epsilon=1.0).config["privacy"]
    sampled = distill(digits_public, epsilon=1.0, sample_rate=0.2).config["privacy"]
    assert sampled["sample_rate"] == 0.2 and sampled["steps"] == 1 and sampled["epsilon"] <= 1.0
    assert sampled["noise_multiplier"] < 0.5 * full["noise_multiplier"]  # 1.64 vs 3.79
    # Class sizes are estimated for the whole data (about 135 digits per class; each estimate's
    # std is about 30 here, sampling and noise together, so their mean's is about 10).
    sizes = sampled["noisy_class_sizes"]
    assert 95 < sum(sizes) / len(sizes) < 175, sizes


def test_every_present_class_gets_ipc_images_and_absent_ones_none(digits_public):
    # min(ipc, count) would reveal a class's size; DP-DM gives every class it keeps ipc
    # images, and drops classes whose noisy size is below the threshold.
    labels = digits_public.train_labels
    idx = torch.cat([torch.nonzero(labels == 2).flatten(), torch.nonzero(labels == 7).flatten()[:3]])
    sset = distill(digits_public.subset(idx), ipc=4, epsilon=10.0, min_class_size=50)
    assert sset.class_counts() == [0, 0, 4] + [0] * 7
    assert sset.config["privacy"]["dropped_classes"] == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert sset.config["present_classes"] == [2]


def test_dp_dm_beats_random_noise_by_a_wide_margin(digits_public):
    # Measured on digits IPC10, 200 iterations, 300 epochs: 0.928 at epsilon 10, 0.819 at 1.
    config = EvalConfig(epochs=150)
    dp = distill(digits_public, ipc=5, iterations=60, bank_size=16, epsilon=10.0)
    noise = distill(digits_public, ipc=5, iterations=0, bank_size=1, epsilon=10.0)  # the noise it starts from
    dp_acc = evaluate_synthetic(dp, digits_public, config, runs=1).mean
    noise_acc = evaluate_synthetic(noise, digits_public, config, runs=1).mean
    assert dp_acc > noise_acc + 0.4, (dp_acc, noise_acc)
    assert dp_acc > 0.7, dp_acc


def test_a_dp_distill_prints_no_exact_size_or_time(tmp_path, digits):
    result = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "dp-dm", "--ipc", "1", "-n", "2",
                                 "-o", "bank_size=1", "--out", str(tmp_path / "dp")])
    assert result.exit_code == 0, result.output
    assert "private number of train images" in result.output
    assert str(digits.train_images.shape[0]) not in result.output and " s\n" not in result.output
