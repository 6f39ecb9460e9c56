"""DD: learning on digits, truncated unrolling keeps memory bounded, resume."""

import pytest
import torch

from fedcond.distill import get_distiller
from fedcond.distill.dd import DDConfig, unrolled_loss
from fedcond.distill.functional import FlatNetwork
from fedcond.errors import FedcondError
from fedcond.evaluate import EvalConfig, evaluate_random, evaluate_synthetic
from fedcond.models import get_model
from graph_memory import SavedTensorMeter  # tests/, a test-only helper


def run(dataset, callbacks=None, **options):
    dd = get_distiller("dd")
    config = dd.config_class.from_dict({"ipc": 1, "iterations": 40, **options})
    return dd.distill(dataset, config, torch.Generator().manual_seed(0), callbacks=callbacks)


def test_loss_decreases_and_beats_random_at_ipc1(digits):
    logged = []
    sset = run(digits, callbacks=[lambda i, n, m: logged.append(m["loss"])])
    assert logged[-1] < 0.8 * logged[0], logged
    assert len(sset.config["learned_step_sizes"]) == DDConfig().unroll_steps
    # Measured (2 eval runs, 200 epochs): 40 iterations ~0.85; the real init
    # (0 iterations) and random real images ~0.62-0.67.
    config = EvalConfig(epochs=200)
    distilled = evaluate_synthetic(sset, digits, config, runs=2).mean
    untouched = evaluate_synthetic(run(digits, iterations=0), digits, config, runs=2).mean
    random = evaluate_random(digits, 1, config, runs=2).mean
    assert distilled > max(random, untouched) + 0.10, (distilled, random, untouched)


def peak_saved_bytes(digits, unroll, backprop):
    student = FlatNetwork(get_model("convnet", 1, 10, (8, 8), seed=0))
    images = digits.train_images[:10].clone().requires_grad_(True)
    steps = torch.full((unroll,), 0.02, requires_grad=True)
    with SavedTensorMeter() as meter:
        loss = unrolled_loss(student, student.flatten(), steps, images, digits.train_labels[:10],
                             digits.train_images[:50], digits.train_labels[:50], backprop)
        loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    return meter.peak


def test_truncation_bounds_memory_by_backprop_steps(digits):
    full_short, full_long = peak_saved_bytes(digits, 2, 2), peak_saved_bytes(digits, 16, 16)
    cut_short, cut_long = peak_saved_bytes(digits, 2, 2), peak_saved_bytes(digits, 16, 2)
    assert full_long > 4 * full_short  # full unrolling grows with the steps
    assert cut_long == pytest.approx(cut_short, rel=0.01)  # truncated: set by backprop_steps only


def test_resumed_run_equals_uninterrupted_run(digits, tmp_path):
    reference = run(digits, iterations=4)

    def crash(i, n, m):
        if i == 2:
            raise KeyboardInterrupt

    resumable = dict(iterations=4, checkpoint_dir=str(tmp_path), checkpoint_every=1, log_every=1)
    with pytest.raises(KeyboardInterrupt):
        run(digits, callbacks=[crash], **resumable)
    resumed = run(digits, **resumable)
    assert torch.equal(resumed.images, reference.images)
    assert resumed.config["learned_step_sizes"] == reference.config["learned_step_sizes"]


def test_bad_settings_are_user_errors():
    with pytest.raises(FedcondError, match="backprop_steps"):
        DDConfig(unroll_steps=5, backprop_steps=6)
