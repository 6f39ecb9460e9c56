"""Kernels and KRR: analytic ReLU NNGP/NTK against wide random networks, PSD, interpolation."""

import math

import pytest
import torch
from torch.func import jacrev

from fedcond.distill.kernels import krr_loss, krr_predict, linear_kernel, relu_nngp, relu_ntk

W_VAR, B_VAR, DEPTH = 2.0, 0.1, 2


def init_params(width, depth, d_in, d_out, seed):
    """Standard normal weights and biases of a ReLU MLP (scaling lives in ``forward``)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [d_in] + [width] * depth + [d_out]
    params = {}
    for i in range(depth + 1):
        params[f"w{i}"] = torch.randn(sizes[i + 1], sizes[i], generator=g)
        params[f"b{i}"] = torch.randn(sizes[i + 1], generator=g)
    return params


def forward(params, x, depth, hidden=False):
    """NTK parametrisation: h = sqrt(w_var / fan_in) W a + sqrt(b_var) b. ``hidden``: last relu(h)."""
    h = x
    for i in range(depth + 1):
        if i:
            h = torch.relu(h)
        if hidden and i == depth:
            return h
        h = math.sqrt(W_VAR / h.shape[-1]) * h @ params[f"w{i}"].T + math.sqrt(B_VAR) * params[f"b{i}"]
    return h


@pytest.fixture(scope="module")
def x(digits):
    return digits.train_images[:6].flatten(1)


def rel_err(a, b, ref):
    return float((a - b).abs().max() / ref.diagonal().mean())


def test_nngp_matches_monte_carlo_of_wide_random_networks(x):
    # Output covariance of width-4096 networks = w_var * mean over last hidden units of
    # relu(h(x)) relu(h(x')) + b_var, averaged over 4 seeds. Measured: 2.9 % of the mean
    # diagonal for the right depth, 12-18 % for depth 1 or 3, so 6 % tells them apart.
    est = []
    for seed in range(4):
        a = forward(init_params(4096, DEPTH, x.shape[1], 1, seed), x, DEPTH, hidden=True)
        est.append(W_VAR * a @ a.T / a.shape[1] + B_VAR)
    mc = torch.stack(est).mean(0)
    exact = relu_nngp(x, x, DEPTH, W_VAR, B_VAR)
    assert rel_err(mc, exact, exact) < 0.06
    for wrong in (DEPTH - 1, DEPTH + 1):
        assert rel_err(mc, relu_nngp(x, x, wrong, W_VAR, B_VAR), exact) > 0.09


def test_ntk_matches_empirical_ntk_of_wide_network(x):
    # Empirical NTK = sum over parameters of Jacobian inner products (torch.func.jacrev),
    # averaged over 4 outputs and 4 seeds of width-1024 networks. Measured: 2.7 % of the
    # mean diagonal; depth 1 or 3, or the NNGP instead of the NTK, are off by 40 % or more.
    est = []
    for seed in range(4):
        params = init_params(1024, DEPTH, x.shape[1], 4, seed)
        jac = jacrev(lambda p: forward(p, x, DEPTH))(params)  # name -> (n, outputs, *shape)
        est.append(sum(torch.einsum("iko,jko->ij", j.flatten(2), j.flatten(2)) for j in jac.values()) / 4)
    empirical = torch.stack(est).mean(0)
    exact = relu_ntk(x, x, DEPTH, W_VAR, B_VAR)
    assert rel_err(empirical, exact, exact) < 0.08
    assert rel_err(empirical, relu_nngp(x, x, DEPTH, W_VAR, B_VAR), exact) > 0.3
    assert rel_err(empirical, relu_ntk(x, x, DEPTH + 1, W_VAR, B_VAR), exact) > 0.3


@pytest.mark.parametrize("kernel", [relu_nngp, relu_ntk])
def test_kernel_matrix_is_symmetric_psd_and_cross_consistent(x, kernel):
    k = kernel(x, x, 3)
    assert torch.allclose(k, k.T, atol=1e-6)
    assert float(torch.linalg.eigvalsh(k.double()).min()) > -1e-6 * float(k.diagonal().max())
    # A cross block equals the corresponding block of the joint matrix.
    assert torch.allclose(kernel(x[:2], x[2:], 3), k[:2, 2:], atol=1e-6)
    # Depth 0 is the (scaled) linear kernel.
    assert torch.allclose(kernel(x, x, 0, 2.0, 0.0), 2.0 * x @ x.T / x.shape[1], atol=1e-5)


def test_relu_kernel_diagonal_is_exact():
    # For x = x' every layer halves the pre-activation variance and multiplies by w_var:
    # NNGP diag stays w_var |x|^2 / d at w_var = 2, b_var = 0; NTK diag = (depth + 1) times it
    # (up to the cosine clamp: ~1.4e-5 relative per layer in the derivative kernel).
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    base = 2.0 * (x * x).sum(1) / 10
    assert torch.allclose(relu_nngp(x, x, 4).diagonal(), base, rtol=1e-5)
    assert torch.allclose(relu_ntk(x, x, 4).diagonal(), 5 * base, rtol=1e-4)


@pytest.mark.parametrize("kernel", [relu_nngp, relu_ntk])
def test_gradients_are_finite_and_correct(kernel):
    x = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(lambda a: kernel(a, y, 2, 2.0, 0.1), (x,))
    # Identical inputs (cosine 1, where arccos has an infinite derivative) still give finite gradients.
    kernel(x, x, 3).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_krr_interpolates_support_as_ridge_vanishes(x):
    y = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    k = relu_ntk(x, x, 2)
    assert torch.allclose(krr_predict(k, k, y, 1e-10), y, atol=1e-4)
    assert not torch.allclose(krr_predict(k, k, y, 10.0), y, atol=1e-2)  # a real ridge smooths
    # The ridge is relative to the kernel's scale: scaling the kernel changes nothing.
    assert torch.allclose(krr_predict(3 * k, 3 * k, y, 0.1), krr_predict(k, k, y, 0.1), atol=1e-5)


def test_linear_kernel_krr_is_ridge_regression_on_features():
    g = torch.Generator().manual_seed(0)
    fs, ft, y = torch.randn(5, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(5, 2, generator=g)
    pred = krr_predict(linear_kernel(fs, fs), linear_kernel(ft, fs), y, 1e-3)
    lam = 1e-3 * float((fs * fs).sum()) / 5
    # Primal form: w = F^T (F F^T + lam I)^-1 y (fewer samples than features).
    w = fs.T @ torch.linalg.solve(fs @ fs.T + lam * torch.eye(5), y)
    assert torch.allclose(pred, ft @ w, atol=1e-4)


def test_krr_loss_weights_classes_equally():
    k_ss, y_s = torch.eye(2), torch.eye(2)
    k_ts = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # first target exact, others predict 0
    y_t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    w = torch.tensor([1.0, 1 / 3, 1 / 3, 1 / 3])  # class 0: 1 image, class 1: 3 images
    assert krr_loss(k_ss, k_ts, y_s, y_t, w, 0.0).item() == pytest.approx(0.5, abs=1e-6)  # (0 + 1) / 2 classes
