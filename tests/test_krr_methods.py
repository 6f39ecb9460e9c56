"""KIP and FRePo: losses, learning on digits, beating random real images, options."""

import pytest
import torch

from fedcond.distill import get_distiller
from fedcond.distill.frepo import FRePoConfig, frepo_loss
from fedcond.distill.kip import KIPConfig, centred_one_hot, kernel_function, kip_loss
from fedcond.errors import FedcondError
from fedcond.evaluate import EvalConfig, evaluate_random, evaluate_synthetic

# Short, cheap settings that still learn (measured on digits, see the tests below).
FAST = {
    "kip": {"iterations": 60},
    "frepo": {"iterations": 60, "num_models": 2},
}


def run(dataset, method, generator_seed=0, callbacks=None, **options):
    d = get_distiller(method)
    config = d.config_class.from_dict({"ipc": 1, **FAST[method], **options})
    return d.distill(dataset, config, torch.Generator().manual_seed(generator_seed), callbacks=callbacks)


def test_kip_loss_is_zero_when_support_is_the_target_and_has_gradients():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 3, 3, generator=g)
    y = centred_one_hot(torch.tensor([0, 1, 2, 0]), 3)
    w = torch.full((4,), 0.5)
    kernel = kernel_function("ntk", 2, 2.0, 0.0)
    assert kip_loss(kernel, x, y, x, y, w, 1e-9).item() == pytest.approx(0, abs=1e-5)
    syn = x[:2].clone().requires_grad_(True)
    loss = kip_loss(kernel, syn, y[:2], x, y, w, 1e-6)
    assert loss.item() > 0.1
    loss.backward()
    assert torch.isfinite(syn.grad).all() and syn.grad.abs().sum() > 0


def test_frepo_loss_mse_and_ce():
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(6, 20, generator=g)
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    y = centred_one_hot(classes, 3)
    w = torch.full((6,), 0.5)
    assert frepo_loss(feat, y, feat, y, w, 1e-9).item() == pytest.approx(0, abs=1e-5)  # interpolation
    syn = feat[:3].clone().requires_grad_(True)
    mse = frepo_loss(syn, y[:3], feat, y, w, 1e-6, "mse")
    ce = frepo_loss(syn, y[:3], feat, y, w, 1e-6, "ce")
    assert mse.item() > 0 and ce.item() > 0
    (mse + ce).backward()
    assert torch.isfinite(syn.grad).all()


@pytest.mark.parametrize("method", ["kip", "frepo"])
def test_loss_decreases_and_images_move(digits, method):
    logged = []
    sset = run(digits, method, callbacks=[lambda i, n, m: logged.append(m["loss"])], log_every=5)
    first, last = sum(logged[:2]) / 2, sum(logged[-2:]) / 2
    assert last < 0.8 * first, logged
    start = run(digits, method, iterations=0)
    assert not torch.allclose(sset.images, start.images)
    assert sset.method == method and sset.num_images == 10 and sset.class_counts() == [1] * 10


def test_beat_random_real_images_at_ipc1_and_need_the_optimisation(digits):
    # Measured (2 runs, distillation seeds 0 / 1): random real IPC1 0.66; KIP (60 iterations)
    # 0.86 / 0.81; FRePo (60 iterations, 2 networks) 0.84 / 0.77; 0 iterations (the real
    # init, never updated) ~random. The control shows the margin comes from the optimisation.
    config = EvalConfig(epochs=200)
    random = evaluate_random(digits, 1, config, runs=2).mean
    untouched = evaluate_synthetic(run(digits, "kip", iterations=0), digits, config, runs=2).mean
    kip = evaluate_synthetic(run(digits, "kip"), digits, config, runs=2).mean
    frepo = evaluate_synthetic(run(digits, "frepo"), digits, config, runs=2).mean
    assert untouched < random + 0.08, (untouched, random)
    assert kip > random + 0.12 and kip > untouched + 0.12, (kip, random, untouched)
    assert frepo > random + 0.08 and frepo > untouched + 0.08, (frepo, random, untouched)


def test_kip_learned_labels_nngp_and_dsa(digits):
    sset = run(digits, "kip", iterations=20, learn_labels=True, kernel="nngp", depth=1, dsa=True, lr_labels=0.1)
    assert sset.soft_labels and sset.labels.shape == (10, 10)
    assert torch.allclose(sset.labels.sum(1), torch.ones(10), atol=1e-5)
    init = torch.softmax(torch.eye(10) * KIPConfig().label_init_scale, dim=1)
    assert not torch.allclose(sset.labels, init, atol=1e-4)  # the labels were learned
    assert sset.config["kernel"] == "nngp" and sset.config["dsa"] is True


@pytest.mark.parametrize("method", ["kip", "frepo"])
def test_only_present_classes_with_up_to_ipc_each(digits, method):
    labels = digits.train_labels
    idx = torch.cat([torch.nonzero(labels == 1).flatten(), torch.nonzero(labels == 3).flatten(),
                     torch.nonzero(labels == 5).flatten()[:2]])
    sset = run(digits.subset(idx), method, ipc=3, iterations=3)
    assert sset.class_counts() == [0, 3, 0, 3, 0, 2, 0, 0, 0, 0]
    assert sset.config["present_classes"] == [1, 3, 5]


def test_frepo_options_run(digits):
    sset = run(
        digits, "frepo", iterations=4, loss="ce", dsa=True, learn_labels=True, online_steps=2, max_online_steps=2
    )
    assert sset.soft_labels and torch.isfinite(sset.images).all()


def test_defaults_and_bad_options():
    assert KIPConfig().optimizer == "adam" and FRePoConfig().optimizer == "adam"
    assert not KIPConfig().dsa and not FRePoConfig().learn_labels
    with pytest.raises(FedcondError, match="kernel"):
        KIPConfig.from_dict({"kernel": "rbf"})
    with pytest.raises(FedcondError, match="depth"):
        KIPConfig(depth=-1)
    with pytest.raises(FedcondError, match="loss"):
        FRePoConfig(loss="hinge")
    with pytest.raises(FedcondError, match="num_models"):
        FRePoConfig(num_models=0)
