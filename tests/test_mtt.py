"""MTT: learning on digits, TESLA's constant memory and its agreement with full unrolling."""

import pytest
import torch

from fedcond.augment import DSA
from fedcond.distill import get_distiller
from fedcond.distill.functional import FlatNetwork
from fedcond.distill.mtt import TRAJECTORY_LOSSES, MTTConfig, plan_student
from fedcond.errors import FedcondError
from fedcond.evaluate import EvalConfig, evaluate_random, evaluate_synthetic
from fedcond.models import get_model
from graph_memory import SavedTensorMeter  # tests/, a test-only helper

# Small experts, shared by the tests of this module through one folder.
EXPERTS = dict(num_experts=2, expert_train_epochs=4, max_start_epoch=2, expert_epochs=2)


@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("experts"))


def run(dataset, experts_dir, callbacks=None, **options):
    mtt = get_distiller("mtt")
    config = mtt.config_class.from_dict({"ipc": 1, "iterations": 30, "experts_dir": experts_dir, **EXPERTS, **options})
    return mtt.distill(dataset, config, torch.Generator().manual_seed(0), callbacks=callbacks)


def student_problem(digits, n_images=20):
    student = FlatNetwork(get_model("convnet", 1, 10, (8, 8), seed=0))
    start = student.flatten()
    target = start + 0.01 * torch.randn(start.shape, generator=torch.Generator().manual_seed(1))
    images = digits.train_images[:n_images].clone().requires_grad_(True)
    lr = torch.tensor(0.01, requires_grad=True)
    return student, start, target, images, digits.train_labels[:n_images], lr


def gradients(mode, problem, steps, dsa=None):
    student, start, target, images, labels, lr = problem
    images.grad, lr.grad = None, None
    plan = plan_student(images.shape[0], steps, 10, dsa, torch.Generator().manual_seed(0), torch.device("cpu"))
    with SavedTensorMeter() as meter:
        loss = TRAJECTORY_LOSSES[mode](student, start, target, lr, images, lambda: labels, plan, dsa, [images, lr])
    return loss, images.grad.clone(), lr.grad.clone(), meter.peak


def test_tesla_memory_is_constant_in_steps_while_unrolling_grows(digits):
    problem = student_problem(digits)
    peaks = {mode: [gradients(mode, problem, n)[3] for n in (2, 16)] for mode in TRAJECTORY_LOSSES}
    assert peaks["tesla"][1] == pytest.approx(peaks["tesla"][0], rel=0.01), peaks
    assert peaks["unrolled"][1] > 6 * peaks["unrolled"][0], peaks
    assert peaks["tesla"][1] < peaks["unrolled"][1] / 5, peaks


def test_tesla_matches_unrolled_loss_and_gradient(digits):
    problem = student_problem(digits)
    for steps in (1, 4):
        loss_t, gx_t, glr_t, _ = gradients("tesla", problem, steps, DSA())
        loss_u, gx_u, glr_u, _ = gradients("unrolled", problem, steps, DSA())
        assert loss_t.item() == pytest.approx(loss_u.item(), rel=1e-5)
        cos = torch.nn.functional.cosine_similarity(gx_t.flatten(), gx_u.flatten(), dim=0)
        if steps == 1:  # one step: nothing is dropped, the gradients are equal
            assert torch.allclose(gx_t, gx_u, rtol=1e-4, atol=1e-9)
            assert glr_t.item() == pytest.approx(glr_u.item(), rel=1e-4)
        else:  # later steps' second-order path is dropped: close, not equal
            assert cos > 0.95, cos


def test_loss_decreases_and_beats_random_at_ipc1(digits, experts_dir):
    logged = []
    sset = run(digits, experts_dir, callbacks=[lambda i, n, m: logged.append(m["loss"])])
    assert logged[-1] < 0.7 * logged[0], logged
    assert sset.method == "mtt" and sset.num_images == 10 and sset.config["learned_lr"] > 0
    # Measured (2 eval runs, 200 epochs): 30 iterations ~0.85; the real init (0
    # iterations, images never updated) and random real images ~0.62-0.67.
    config = EvalConfig(epochs=200)
    distilled = evaluate_synthetic(sset, digits, config, runs=2).mean
    untouched = evaluate_synthetic(run(digits, experts_dir, iterations=0), digits, config, runs=2).mean
    random = evaluate_random(digits, 1, config, runs=2).mean
    assert distilled > max(random, untouched) + 0.10, (distilled, random, untouched)


def test_resumed_run_equals_uninterrupted_run(digits, experts_dir, tmp_path):
    reference = run(digits, experts_dir, iterations=4, learn_labels=True)

    def crash(i, n, m):
        if i == 2:
            raise KeyboardInterrupt

    resumable = dict(iterations=4, learn_labels=True, checkpoint_dir=str(tmp_path), checkpoint_every=1, log_every=1)
    with pytest.raises(KeyboardInterrupt):
        run(digits, experts_dir, callbacks=[crash], **resumable)
    resumed = run(digits, experts_dir, **resumable)
    assert torch.equal(resumed.images, reference.images) and torch.equal(resumed.labels, reference.labels)
    assert resumed.config["learned_lr"] == reference.config["learned_lr"]


def test_bad_settings_are_user_errors():
    with pytest.raises(FedcondError, match="exceeds"):
        MTTConfig(max_start_epoch=9, expert_epochs=2, expert_train_epochs=10)
    with pytest.raises(FedcondError, match="gradient"):
        MTTConfig(gradient="exact")
