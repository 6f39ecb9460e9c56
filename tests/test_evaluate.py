"""Evaluation protocol on digits: well above chance, reproducible, hard and soft labels."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fedcond.errors import FedcondError
from fedcond.evaluate import EvalConfig, evaluate_full, evaluate_random, evaluate_synthetic, random_subset_indices
from fedcond.train import soft_cross_entropy


def test_synthetic_set_beats_chance_widely_and_is_reproducible(digits, tiny_set):
    cfg = EvalConfig(epochs=100)
    a = evaluate_synthetic(tiny_set, digits, cfg, runs=2, seed=0)
    b = evaluate_synthetic(tiny_set, digits, cfg, runs=2, seed=0)
    assert a.accuracies == b.accuracies
    assert a.mean > 0.6  # 20 real images; chance is 0.1
    out = a.to_json()
    assert 0 <= out["accuracy_mean"] <= 1 and out["runs"] == 2 and out["accuracy_std"] >= 0


def test_soft_labels_train_like_hard_labels(digits, tiny_set):
    cfg = EvalConfig(epochs=100)
    onehot = torch.nn.functional.one_hot(tiny_set.labels, 10).float()
    hard = evaluate_synthetic(tiny_set, digits, cfg, runs=1)
    soft = evaluate_synthetic(replace(tiny_set, labels=onehot), digits, cfg, runs=1)
    assert soft.accuracies == pytest.approx(hard.accuracies, abs=1e-6)


def test_soft_cross_entropy_matches_cross_entropy_on_one_hot():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0])
    ref = torch.nn.functional.cross_entropy(logits, y)
    assert soft_cross_entropy(logits, torch.nn.functional.one_hot(y, 4).float()).item() == pytest.approx(ref.item())


def test_full_data_upper_bound_and_random_lower_bound(digits):
    full = evaluate_full(digits, EvalConfig(epochs=20), runs=1)
    rnd = evaluate_random(digits, 1, EvalConfig(epochs=100), runs=2)
    assert full.num_train_images == digits.train_images.shape[0] and rnd.num_train_images == 10
    assert full.mean > 0.85 and full.mean > rnd.mean + 0.2
    assert rnd.accuracies[0] != rnd.accuracies[1]  # each run draws its own subset


def test_random_subset_is_class_balanced_and_seeded(digits):
    a = random_subset_indices(digits, 3, torch.Generator().manual_seed(0))
    b = random_subset_indices(digits, 3, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(set(a.tolist())) == 30
    assert torch.bincount(digits.train_labels[a], minlength=10).tolist() == [3] * 10


def test_incompatible_set_is_a_user_error(digits, tiny_set):
    bad = replace(tiny_set, images=torch.zeros(tiny_set.num_images, 1, 4, 4))
    with pytest.raises(FedcondError, match="evaluate on the data set it was made from"):
        evaluate_synthetic(bad, digits, EvalConfig(epochs=1), runs=1)
    with pytest.raises(FedcondError, match="epochs"):
        EvalConfig(epochs=0)


def test_dsa_evaluation_strategy_is_checked_and_changes_training(digits, tiny_set):
    with pytest.raises(FedcondError, match="unknown DSA strategy"):
        EvalConfig(dsa=True, dsa_strategy="nope")
    plain = evaluate_synthetic(tiny_set, digits, EvalConfig(epochs=20), runs=1)
    aug = evaluate_synthetic(
        tiny_set, digits, EvalConfig(epochs=20, dsa=True, dsa_strategy="crop_scale_rotate"), runs=1
    )
    assert aug.accuracies != plain.accuracies and aug.mean > 0.3


def test_cross_architecture_evaluation_runs_each_model_with_the_same_protocol(digits, tiny_set):
    from fedcond.evaluate import evaluate_architectures

    cfg = EvalConfig(epochs=20)
    results = evaluate_architectures(tiny_set, digits, ["ConvNet", "mlp"], cfg, runs=2, seed=1)
    assert [r.config.model for r in results] == ["convnet", "mlp"]
    assert all(len(r.accuracies) == 2 and r.config.epochs == 20 for r in results)
    alone = evaluate_synthetic(tiny_set, digits, cfg, runs=2, seed=1)
    assert results[0].accuracies == alone.accuracies  # same seeds, same protocol as a single evaluation
    for models, message in [
        ([], "empty model name"),
        (["mlp", "mlp"], "listed twice"),
        (["convnet", "nope"], "unknown model"),
    ]:
        with pytest.raises(FedcondError, match=message):
            evaluate_architectures(tiny_set, digits, models, cfg, runs=1)
