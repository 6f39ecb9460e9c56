"""Expert trajectories: shape, storage, reuse, exact resume, refusal of mismatched folders."""

import pytest
import torch

from fedcond.distill import experts as experts_module
from fedcond.distill.experts import ExpertConfig, ensure_experts, expert_accuracies, train_expert
from fedcond.distill.functional import FlatNetwork
from fedcond.errors import FedcondError
from fedcond.models import get_model

SMALL = dict(num_experts=2, epochs=3, dsa=False)


class Crash(Exception):
    pass


def test_trajectory_starts_at_init_and_moves_each_epoch(digits):
    config = ExpertConfig(**SMALL)
    trajectory, acc = train_expert(digits, config, index=0)
    init = FlatNetwork(get_model("convnet", 1, 10, (8, 8), seed=config.seed)).flatten()
    assert trajectory.shape == (4, init.numel())
    assert torch.equal(trajectory[0], init)
    steps = (trajectory[1:] - trajectory[:-1]).norm(dim=1)
    assert (steps > 0).all()
    assert acc > 0.5  # three epochs on digits already learn something


def test_folder_is_written_reused_and_grown(digits, tmp_path, monkeypatch):
    first = ensure_experts(digits, ExpertConfig(**SMALL), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "expert_000.safetensors",
        "expert_001.safetensors",
        "manifest.json",
    ]
    assert len(expert_accuracies(tmp_path)) == 2

    calls = []
    real = experts_module.train_expert
    monkeypatch.setattr(experts_module, "train_expert", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    again = ensure_experts(digits, ExpertConfig(**SMALL), tmp_path)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(first, again))
    grown = ensure_experts(digits, ExpertConfig(**{**SMALL, "num_experts": 3}), tmp_path)
    assert calls == [2] and len(grown) == 3 and torch.equal(grown[0], first[0])


def test_interrupted_expert_resumes_bit_for_bit(digits, tmp_path):
    config = ExpertConfig(**SMALL)
    reference = ensure_experts(digits, config, None)

    def crash(done, total):
        if done == 4:  # expert 1, after its first epoch
            raise Crash()

    with pytest.raises(Crash):
        ensure_experts(digits, config, tmp_path, on_epoch=crash)
    assert (tmp_path / "expert_000.safetensors").exists()
    assert (tmp_path / "expert_001.partial.safetensors").exists()
    epochs = []
    resumed = ensure_experts(digits, config, tmp_path, on_epoch=lambda d, t: epochs.append(d))
    assert epochs == [1, 2]  # only expert 1's two remaining epochs were trained
    assert not (tmp_path / "expert_001.partial.safetensors").exists()
    assert all(torch.equal(a, b) for a, b in zip(reference, resumed))


def test_mismatched_or_corrupt_folder_is_refused(digits, tmp_path):
    ensure_experts(digits, ExpertConfig(**SMALL), tmp_path)
    with pytest.raises(FedcondError, match="trained differently.*config"):
        ensure_experts(digits, ExpertConfig(**{**SMALL, "lr": 0.05}), tmp_path)
    (tmp_path / "expert_001.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FedcondError, match="cannot read expert file"):
        ensure_experts(digits, ExpertConfig(**SMALL), tmp_path)


def test_bad_options_are_user_errors():
    with pytest.raises(FedcondError, match="unknown expert option"):
        ExpertConfig.from_dict({"epoch": 3})
    with pytest.raises(FedcondError):
        ExpertConfig(num_experts=0)


def test_experts_command_writes_a_reusable_folder(tmp_path):
    import json

    from typer.testing import CliRunner

    from fedcond.cli import app

    runner = CliRunner()
    args = ["experts", "--dataset", "digits", "--out", str(tmp_path), "--num-experts", "1", "--epochs", "2",
            "--no-dsa", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 experts in" in result.output
    record = json.loads((tmp_path / "run.json").read_text())
    assert len(record["expert_test_accuracies"]) == 1 and record["config"]["epochs"] == 2
    assert runner.invoke(app, args).exit_code == 0  # re-run: reuses the folder
    bad = runner.invoke(app, [*args[:-2], "--threads", "0"])
    assert bad.exit_code == 2 and "error: --threads must be >= 1" in bad.output
    other = runner.invoke(app, [*args[:5], "--num-experts", "1", "--epochs", "3", "--no-dsa"])
    assert other.exit_code == 2 and "trained differently" in other.output
