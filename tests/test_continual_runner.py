"""``fedcond continual`` end to end on a tiny split-digits: results.json schema, plots, errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fedcond.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the command sets --threads; give the rest of the suite its own


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cl")
    result = runner.invoke(app, [
        "continual", "--benchmark", "split-digits", "--strategies", "naive,replay,distilled-replay,joint",
        "--mem-size", "10,20", "--method", "random", "--epochs", "1", "--train-fraction", "0.2",
        "--threads", "1", "--device", "cpu", "--seed", "3", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "results.json").read_text())


def test_results_json_schema(run):
    _, results = run
    runs = results["runs"]
    assert {(r["strategy"], r["mem_size"]) for r in runs} == {
        ("naive", 0), ("joint", 0), ("replay", 10), ("replay", 20), ("distilled-replay", 10), ("distilled-replay", 20)}
    for r in runs:
        assert r["seed"] == 3
        assert isinstance(r["strategy"], str) and isinstance(r["mem_size"], int)
        assert 0.0 <= r["final_average_accuracy"] <= 1.0 and -1.0 <= r["forgetting"] <= 1.0
        m = r["accuracy_matrix"]
        assert len(m) == (1 if r["strategy"] == "joint" else 5) and all(len(row) == 5 for row in m)
        assert all(0.0 <= v <= 1.0 for row in m for v in row)
        assert r["final_average_accuracy"] == pytest.approx(sum(m[-1]) / 5)
    dr = [r for r in runs if r["strategy"] == "distilled-replay"]
    assert all(r["buffer_images"] == r["mem_size"] and r["buffer_bytes"] > 0 for r in dr)
    assert all(len(r["distill_seconds_per_experience"]) == 5 for r in dr)
    # peak resident memory, sampled by Avalanche's MaxRAM: a Python process with torch holds well over 50 MiB
    assert all(r["peak_rss_mib"] > 50 for r in runs)
    assert all(
        r["forgetting"]
        == pytest.approx(sum(r["accuracy_matrix"][k][k] - r["accuracy_matrix"][-1][k] for k in range(4)) / 4)
        for r in runs
        if r["strategy"] != "joint"
    )
    from fedcond.precision import resolve_precision

    assert all(r["settings"]["precision"] == resolve_precision("auto", "cpu") for r in runs)  # what ran, not "auto"
    assert {s["strategy"] for s in results["summary"]} == {"naive", "replay", "distilled-replay", "joint"}
    assert results["benchmark"] == "split-digits" and "versions" in results and "device" in results


def test_plots_and_avalanche_logs_written(run):
    out, _ = run
    for name in ("accuracy_matrix.png", "accuracy_vs_memory.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "logs" / "replay_m10_s3.txt").stat().st_size > 0  # Avalanche TextLogger
    assert list((out / "logs" / "replay_m10_s3").glob("*.csv"))  # Avalanche CSVLogger
    # the distilled buffer after the last experience: its set and its picture
    assert (out / "buffers" / "distilled-replay_m20_s3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from fedcond.synthetic import SyntheticSet

    assert SyntheticSet.load(out / "buffers" / "distilled-replay_m20_s3.safetensors").num_images == 20


@pytest.mark.parametrize("args, message", [
    (["--strategies", "naive,ewc"], "unknown strategy"),
    (["--mem-size", "ten"], "--mem-size expects a comma list"),
    (["--benchmark", "split-imagenet"], "unknown benchmark"),
    (["--method", "nope", "--strategies", "distilled-replay"], "unknown method"),
    (["--buffer-epochs", "0", "--strategies", "gdumb"], "buffer training needs epochs >= 1"),
    (["--precision", "float16"], "--precision must be one of auto, float32, bfloat16"),
])
def test_user_errors_are_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["continual", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_der_is_avalanche_dark_experience_replay_and_learns(tmp_path):
    from avalanche.training.supervised import DER

    from fedcond.continual.strategies import StrategySettings, build_strategy
    from fedcond.models import get_model

    strategy = build_strategy(StrategySettings(name="der", mem_size=10, lr=0.01, epochs=1, der_alpha=0.3),
                              get_model("convnet", 1, 10, (8, 8)), None, torch.device("cpu"))
    assert isinstance(strategy, DER) and strategy.mem_size == 10 and strategy.alpha == 0.3
    out = tmp_path / "der"
    result = runner.invoke(app, [
        "continual", "--benchmark", "split-digits", "--strategies", "der", "--mem-size", "20", "--epochs", "1",
        "--train-fraction", "0.2", "--threads", "1", "--device", "cpu", "--seed", "0", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    (run_,) = json.loads((out / "results.json").read_text())["runs"]
    assert run_["strategy"] == "der" and run_["mem_size"] == 20
    # replaying 20 images of earlier classes keeps more than naive fine-tuning's last-experience-only 0.2
    assert run_["final_average_accuracy"] > 0.25


def test_bfloat16_trains_avalanches_own_strategies_under_autocast(digits):
    """Every strategy of the comparison trains in the run's precision (here Naive)."""
    import warnings

    from torch.utils.data import TensorDataset

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from avalanche.benchmarks import nc_benchmark
    from avalanche.benchmarks.utils import as_classification_dataset

    from fedcond.continual.strategies import AutocastPlugin, StrategySettings, build_strategy
    from fedcond.models import get_model

    class Tensors(TensorDataset):
        def __init__(self, x, y):
            super().__init__(x, y)
            self.targets = y.tolist()

    data = as_classification_dataset(Tensors(digits.train_images[:64], digits.train_labels[:64]))
    bench = nc_benchmark(data, data, n_experiences=1, task_labels=False, shuffle=False)
    model = get_model("convnet", 1, 10, (8, 8), seed=0)
    seen = []
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    for precision, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        settings = StrategySettings(name="naive", mem_size=0, lr=0.01, epochs=1, precision=precision)
        strategy = build_strategy(settings, model, None, torch.device("cpu"))
        assert any(isinstance(p, AutocastPlugin) for p in strategy.plugins) == (precision == "bfloat16")
        seen.clear()
        strategy.train(bench.train_stream[0])
        assert seen and set(seen) == {dtype}
        assert not torch.is_autocast_enabled("cpu")  # the context was left after each step
