"""Kernels and kernel ridge regression (KRR), the core of KIP and FRePo.

* :func:`krr_predict` — KRR predictions on targets from a support set.
* :func:`relu_nngp`, :func:`relu_ntk` — the analytic infinite-width NNGP and NTK of a
  fully connected ReLU network (Cho & Saul 2009; Lee et al. 2018; Jacot et al. 2018).
* :func:`linear_kernel` — inner products of features (FRePo's kernel).
* :func:`krr_loss` — the class-weighted squared error of KRR predictions.

All are pure, differentiable functions of their inputs.

Network convention (the "NTK parametrisation"): ``depth`` hidden layers of width n -> inf,
``h_1 = sqrt(w_var / d) W_1 x + sqrt(b_var) b_1``, ``h_{l+1} = sqrt(w_var / n) W_{l+1}
relu(h_l) + sqrt(b_var) b_{l+1}``, all W, b standard normal, one linear read-out layer of
the same form. With ``Sigma_1 = w_var <x, x'> / d + b_var`` and, for a layer whose input
pre-activations have covariance Sigma (diagonals s, s', cosine rho = cos(theta)):

    Sigma_{l+1}  = w_var * sqrt(s s') / (2 pi) * (sin theta + (pi - theta) cos theta) + b_var
    Sigma'_{l+1} = w_var * (pi - theta) / (2 pi)
    Theta_1 = Sigma_1,   Theta_{l+1} = Sigma_{l+1} + Theta_l * Sigma'_{l+1}

the NNGP of the output is ``Sigma_{depth+1}`` and the NTK ``Theta_{depth+1}``.
"""

from __future__ import annotations

import math

import torch

# theta = arccos(rho) has an infinite derivative at rho = +-1 (every diagonal entry), so
# rho is clamped into the open interval. Clamping shifts theta by ~sqrt(2 eps), hence the
# derivative kernel (pi - theta) / (2 pi) by ~sqrt(2 eps) / pi relative (1.4e-5 here): the
# recursion runs in float64 so that eps can be this small.
COS_EPS = 1e-9


def _arccos_step(
    cov: torch.Tensor, diag1: torch.Tensor, diag2: torch.Tensor, w_var: float, b_var: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ReLU layer: (Sigma_{l+1}, Sigma'_{l+1}, new diag1, new diag2) from Sigma_l.

    The diagonals are propagated exactly (theta = 0: E[relu(u)^2] = s / 2), so they do not
    inherit the clamping error of the cross terms.
    """
    norms = torch.sqrt(diag1[:, None] * diag2[None, :]).clamp_min(1e-30)
    rho = (cov / norms).clamp(-1 + COS_EPS, 1 - COS_EPS)
    theta = torch.arccos(rho)
    nngp = w_var * norms * (torch.sin(theta) + (math.pi - theta) * rho) / (2 * math.pi) + b_var
    deriv = w_var * (math.pi - theta) / (2 * math.pi)
    return nngp, deriv, w_var * diag1 / 2 + b_var, w_var * diag2 / 2 + b_var


def _relu_kernels(
    x1: torch.Tensor, x2: torch.Tensor, depth: int, w_var: float, b_var: float, ntk: bool
) -> torch.Tensor:
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    a, b = x1.flatten(1).double(), x2.flatten(1).double()
    d = a.shape[1]
    if b.shape[1] != d:
        raise ValueError(f"inputs have {d} and {b.shape[1]} features")
    cov = w_var * (a @ b.T) / d + b_var
    diag1 = w_var * (a * a).sum(1) / d + b_var
    diag2 = w_var * (b * b).sum(1) / d + b_var
    theta = cov
    for _ in range(depth):
        cov, deriv, diag1, diag2 = _arccos_step(cov, diag1, diag2, w_var, b_var)
        if ntk:
            theta = cov + theta * deriv
    return (theta if ntk else cov).to(x1.dtype)


def relu_nngp(x1: torch.Tensor, x2: torch.Tensor, depth: int, w_var: float = 2.0, b_var: float = 0.0) -> torch.Tensor:
    """(N1, N2) NNGP kernel of a ReLU network with ``depth`` hidden layers (inputs flattened).

    Computed in float64, returned in the dtype of ``x1``.

    ``w_var``/``b_var``: weight and bias variances (2.0 keeps ReLU activations at unit scale).
    """
    return _relu_kernels(x1, x2, depth, w_var, b_var, ntk=False)


def relu_ntk(x1: torch.Tensor, x2: torch.Tensor, depth: int, w_var: float = 2.0, b_var: float = 0.0) -> torch.Tensor:
    """(N1, N2) neural tangent kernel of the same network (all layers trained)."""
    return _relu_kernels(x1, x2, depth, w_var, b_var, ntk=True)


def linear_kernel(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """(N1, N2) inner products of flattened features (scale is irrelevant to :func:`krr_predict`)."""
    return f1.flatten(1) @ f2.flatten(1).T


def krr_predict(k_ss: torch.Tensor, k_ts: torch.Tensor, y_s: torch.Tensor, ridge: float) -> torch.Tensor:
    """Kernel ridge regression: ``k_ts @ (k_ss + lam I)^-1 y_s`` with ``lam = ridge * tr(k_ss) / n``.

    The ridge is relative to the mean diagonal of ``k_ss`` (KIP's and FRePo's choice), so one
    value works for kernels of any scale (NTK vs NNGP vs features of any width). The solve is
    in float64: kernel matrices of nearly identical images are badly conditioned and float32
    LU loses digits that the gradients need. The result has the dtype of ``k_ts``.

    Args:
        k_ss: (N, N) support kernel; k_ts: (T, N) target-support kernel; y_s: (N, K) support targets.
    """
    n = k_ss.shape[0]
    k64 = k_ss.double()
    lam = ridge * torch.diagonal(k64).sum() / n
    eye = torch.eye(n, dtype=torch.float64, device=k_ss.device)
    alpha = torch.linalg.solve(k64 + lam * eye, y_s.double())
    return (k_ts.double() @ alpha).to(k_ts.dtype)


def krr_loss(
    k_ss: torch.Tensor, k_ts: torch.Tensor, y_s: torch.Tensor, y_t: torch.Tensor, weights: torch.Tensor, ridge: float
) -> torch.Tensor:
    """Squared error of KRR predictions on targets, averaged per class then over classes.

    ``weights`` (T,) are the real batch's averaging weights, 1/b_c on a class's b_c images and
    0 on padding (see ``ClassSampler.weights``); they sum to the number of classes R, so the
    loss is the mean over classes of the class-mean squared error (summed over outputs).
    """
    pred = krr_predict(k_ss, k_ts, y_s, ridge)
    per_target = ((pred - y_t) ** 2).sum(1)
    return (weights * per_target).sum() / weights.sum()
