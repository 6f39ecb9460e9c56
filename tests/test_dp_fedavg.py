"""Issue 40 item 3: DP-FedAvg, FedAvg whose clients train with DP-SGD (Opacus), accounted
with DP-DM's accountant over every round and local step."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from fedcond.errors import FedcondError
from fedcond.federated.client_training import local_train
from fedcond.federated.config import FederateConfig
from fedcond.federated.dp_sgd import check_model, dp_local_train, plan, steps_per_epoch
from fedcond.models import get_model
from fedcond.privacy.accounting import epsilon_for
from fedcond.recipe import Recipe

TINY = {"dataset": "digits", "num_clients": 2, "partition": "iid", "seed": 0, "rounds": 2, "local_epochs": 1,
        "dp_sample_rate": 0.5, "dp_clip": 1.0, "lr": 0.05, "storage_dtypes": "float32", "ipc": 1, "iterations": 2,
        "server_epochs": 2, "method_options": '{"bank_size": 1, "min_class_size": 0}'}


def test_the_solved_noise_gives_back_the_target_epsilon_from_the_accountant():
    p = plan(2.0, 1e-5, 0.25, 3, 2, 1.0, 32)
    assert p.steps_per_epoch == 4 and p.spend.steps == 3 * 2 * 4 and p.steps_per_round == 8
    again = epsilon_for(p.spend.noise_multiplier, 0.25, p.spend.steps, 1e-5)  # the same accountant, asked afresh
    assert again == pytest.approx(p.spend.epsilon) and 1.95 <= again <= 2.0
    looser = plan(8.0, 1e-5, 0.25, 3, 2, 1.0, 32)  # more budget: less noise; more steps: more noise
    longer = plan(2.0, 1e-5, 0.25, 6, 2, 1.0, 32)
    assert looser.spend.noise_multiplier < p.spend.noise_multiplier < longer.spend.noise_multiplier
    assert steps_per_epoch(0.3) == 3 and steps_per_epoch(1.0) == 1 and steps_per_epoch(0.001) == 1000


def test_unreachable_or_incomplete_settings_are_one_line_errors_before_any_work(tmp_path):
    with pytest.raises(FedcondError, match="no noise level reaches epsilon 0.0001.*raise epsilon"):
        plan(1e-4, 1e-5, 1.0, 1, 1, 1.0, 32)
    with pytest.raises(FedcondError, match="--dp-sample-rate"):
        plan(1.0, 1e-5, 0.0, 1, 1, 1.0, 32)
    with pytest.raises(FedcondError, match="needs --dp-epsilon"):
        FederateConfig(**{**TINY, "strategies": "fedcond,dpfedavg"})
    with pytest.raises(FedcondError, match="--dp-clip"):
        FederateConfig(**{**TINY, "dp_epsilon": 1.0, "dp_clip": 0.0})
    # run_experiment refuses before its first run: nothing is distilled, nothing written for a run
    from fedcond.simulations.experiment import run_experiment

    cfg = FederateConfig(**{**TINY, "dp_epsilon": 1.0, "dp_sample_rate": 0.0})
    with pytest.raises(FedcondError, match="--dp-sample-rate"):
        run_experiment(cfg, ["fedcond", "dpfedavg"], tmp_path, reference="none")
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "results.json").exists()


def test_batch_norm_is_refused():
    with pytest.raises(FedcondError, match="convnet"):
        check_model(get_model("convnet-bn", 1, 10, (8, 8), seed=0))
    check_model(get_model("convnet", 1, 10, (8, 8), seed=0))  # instance norm: per example


def test_without_noise_and_clipping_it_is_fedavg_local_training(digits_public):
    """Noise 0, a clip no gradient reaches, sample rate 1 (every image every step) and the
    batch size as the divisor: each DP-SGD step is the full-batch mean gradient, which is
    FedAvg's local training with one batch of all images (no augmentation: its draws differ)."""
    x, y = digits_public.train_images[:40], digits_public.train_labels[:40]
    p = plan(10.0, 1e-5, 1.0, 1, 3, 1e6, x.shape[0])
    recipe = Recipe(augment="none")
    dp_model, plain = get_model("convnet", 1, 10, (8, 8), seed=3), get_model("convnet", 1, 10, (8, 8), seed=3)
    steps = dp_local_train(dp_model, x, y, p, 0.05, torch.Generator().manual_seed(0), recipe, noise_multiplier=0.0)
    local_train(plain, x, y, epochs=steps, lr=0.05, batch_size=x.shape[0], generator=torch.Generator().manual_seed(0),
                recipe=recipe)
    assert steps == 3
    for (name, a), b in zip(dp_model.state_dict().items(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    moved = get_model("convnet", 1, 10, (8, 8), seed=3).state_dict()
    assert any(not torch.equal(moved[k], v) for k, v in dp_model.state_dict().items())  # it did train
    # with the plan's noise the result differs from the noiseless one (the noise is there)
    noisy = get_model("convnet", 1, 10, (8, 8), seed=3)
    dp_local_train(noisy, x, y, plan(1.0, 1e-5, 1.0, 1, 3, 1.0, x.shape[0]), 0.05, torch.Generator().manual_seed(0),
                   recipe)
    assert not torch.allclose(noisy.classifier.weight, dp_model.classifier.weight)


def test_a_clients_reply_states_nothing_exact(task_identity):
    from fedcond.federated.data_cache import federated_data
    from fedcond.federated.records import ARRAYRECORD_KEY, model_to_record, new_model
    from fedcond.simulations.client_app import _dpfedavg_reply

    cfg = FederateConfig(**{**TINY, "dp_epsilon": 10.0}).for_strategy("dpfedavg")
    arrays = model_to_record(new_model(federated_data(cfg), cfg))
    msg = Message(RecordDict({ARRAYRECORD_KEY: arrays, "config": ConfigRecord({"server-round": 1})}), dst_node_id=1,
                  message_type=MessageType.TRAIN)
    content = _dpfedavg_reply(msg, cfg, 0, 1)
    assert dict(content["metrics"]) == {"num-examples": 1, "partition-id": 0}  # no size, no loss, no time


def test_dp_fedavg_end_to_end_beside_dp_fedcond(tmp_path):
    """Through the ClientApp and ServerApp in Flower's simulation: the folder is DP output,
    the run's accounted epsilon is at most the target and its record names the plan."""
    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config

    cfg = FederateConfig(**{**TINY, "dp_epsilon": 10.0, "strategies": "fedcond,dpfedavg"})
    result = run_experiment(cfg, ["fedcond", "dpfedavg"], tmp_path, backend_config(1.0, 0.0, 2), reference="none")
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = {r["name"]: r for r in saved["runs"]}
    assert set(runs) == {"fedcond", "dpfedavg"}
    dp = runs["dpfedavg"]
    assert 9.5 < dp["epsilon"] <= 10.0 and dp["delta"] == 1e-5
    privacy = dp["privacy"]
    assert privacy["steps"] == 2 * 1 * 2 and privacy["sample_rate"] == 0.5 and privacy["clip_norm"] == 1.0
    assert privacy["noise_multiplier"] > 0 and privacy["accountant"] == "prv"
    assert len(dp["rounds"]) == 2 and all(r["accuracy"] is not None for r in dp["rounds"])
    assert dp["selected_round"] in (1, 2) and dp["upload_bytes"] > 0
    assert all(r["seconds"] is None and r["clients_seconds"] is None for r in dp["rounds"])  # no timings under DP
    assert saved["validation"]["images"] is None  # an exact count follows the private class sizes
    combined = saved["privacy"]["combined"]
    assert len(combined["releases"]) == 2 and combined["epsilon"] <= 20.0
    assert "| dpfedavg |" in (tmp_path / "results.md").read_text()
    assert result["runs"][1]["epsilon"] == dp["epsilon"]


def test_the_benchmark_skips_finished_cells_and_summarises(tmp_path, monkeypatch):
    from benchmark_scripts import load_script

    bench = load_script("dp_federated_benchmark")
    argv = ["--seeds", "0,1", "--epsilons", "10", "--grid-clip", "1", "--grid-lr", "0.1,0.2", "--out", str(tmp_path)]
    args = bench.parse_args(argv)

    def cell(strategy, acc, val, traffic, clip=None, lr=None):
        return {"strategy": strategy, "accuracy": acc, "val_accuracy": val, "round": 1, "traffic_bytes": traffic,
                "epsilon": 9.9, "delta": 1e-5, "privacy": None, "curve": [], "clip": clip, "lr": lr}

    cells = {"seed0_fedcond_eps10": cell("fedcond", 0.9, 0.9, 2**20),
             "seed0_tune_eps10_clip1_lr0.1": cell("dpfedavg", 0.6, 0.5, 100 * 2**20, 1.0, 0.1),
             "seed0_tune_eps10_clip1_lr0.2": cell("dpfedavg", 0.7, 0.8, 100 * 2**20, 1.0, 0.2),
             "seed1_fedcond_eps10": cell("fedcond", 0.8, 0.8, 2**20),
             "seed1_dpfedavg_eps10": cell("dpfedavg", 0.75, 0.7, 100 * 2**20, 1.0, 0.2)}
    (tmp_path / "dp_federated_digits.json").write_text(json.dumps({"settings": bench.settings_key(args),
                                                                   "cells": cells}))
    monkeypatch.setattr(bench, "run_cell", lambda *a: pytest.fail("a finished cell ran again"))
    results = bench.main(argv)
    won = results["winners"]["eps10"]  # the better validation accuracy, not test
    assert (won["clip"], won["lr"], won["edges"]) == (1.0, 0.2, ["clip not tuned (one value)", "largest lr"])
    summary = results["summary"]["eps10"]
    assert summary["seeds"] == ["0", "1"] and summary["gain"]["mean"] == pytest.approx((0.2 + 0.05) / 2)
    assert summary["fedcond_traffic_mib"] == 1.0 and summary["dpfedavg_traffic_mib"] == 100.0
    md = (tmp_path / "dp_federated_digits.md").read_text()
    assert "| 10 | 0,1 |" in md and "1.00%" in md and "Command: `python" in md
    assert "clip {1} x lr {0.1, 0.2}; clip not tuned (one value), largest lr" in md

    # The grid extended past its edge: only the new grid cell and the later seed's cell of the new winner run.
    ran = []

    stale = tmp_path / "scratch" / "digits" / "seed1_dpfedavg_eps10" / "checkpoints"
    stale.mkdir(parents=True)  # the old winner's checkpoints: a rerun with other settings would refuse them

    def fake_run(cfg, folder, cpus, gpus):
        assert not (folder / "checkpoints").exists()
        ran.append(folder.name)
        return cell("dpfedavg", 0.72, 0.85 if cfg.lr == 0.4 else 0.6, 100 * 2**20, cfg.dp_clip, cfg.lr)

    monkeypatch.setattr(bench, "run_cell", fake_run)
    results = bench.main([*argv[:-6], "--grid-clip", "1", "--grid-lr", "0.1,0.2,0.4", "--out", str(tmp_path),
                          "--scratch", str(tmp_path / "scratch")])
    assert ran == ["seed0_tune_eps10_clip1_lr0.4", "seed1_dpfedavg_eps10"]
    won = results["winners"]["eps10"]
    assert (won["lr"], won["grid_lr"]) == (0.4, [0.1, 0.2, 0.4])
    assert won["edges"] == ["clip not tuned (one value)", "largest lr"]
    assert results["cells"]["seed1_dpfedavg_eps10"]["lr"] == 0.4


def test_the_command_refuses_before_its_header(tmp_path):
    """`fedcond federate` solves dpfedavg's plan before it prints anything or touches OUT."""
    from typer.testing import CliRunner

    from fedcond.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["federate", "--dataset", "digits", "--strategies", "fedcond,dpfedavg",
                                      "--dp-epsilon", "1", "--out", str(out)])
    assert result.exit_code != 0 and "--dp-sample-rate" in result.output
    assert "federate digits" not in result.output and not (out / "checkpoints").exists()
