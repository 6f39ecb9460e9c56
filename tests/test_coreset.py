"""Coreset selection rules and distillers: herding tracks the mean, k-center covers."""

from __future__ import annotations

import torch

from fedcond.distill import get_distiller, method_names
from fedcond.distill.coreset import CoresetConfig, herding_select, kcenter_select, random_select


def _feats(n=200, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.5, 3, d)


def test_herding_running_mean_approaches_the_class_mean():
    x = _feats()
    mu = x.mean(0)
    picked = herding_select(x, 20)
    assert len(set(picked.tolist())) == 20
    err = [float((x[picked[:t]].mean(0) - mu).norm()) for t in range(1, 21)]
    assert err[-1] < err[0] / 4  # the running mean converges on the mean
    rand_err = [
        float((x[random_select(200, 20, torch.Generator().manual_seed(s))].mean(0) - mu).norm()) for s in range(20)
    ]
    assert err[-1] < min(rand_err)  # and much faster than any random pick of 20


def test_kcenter_covers_better_than_random():
    x = _feats(seed=1)

    def radius(idx):
        return float(torch.cdist(x, x[idx]).min(dim=1).values.max())

    picked = kcenter_select(x, 10)
    assert len(set(picked.tolist())) == 10
    rand = [radius(random_select(200, 10, torch.Generator().manual_seed(s))) for s in range(20)]
    assert radius(picked) < min(rand)


def test_selection_caps_at_available_rows():
    x = _feats(n=3)
    assert len(herding_select(x, 10)) == 3 and len(kcenter_select(x, 10)) == 3


def test_coreset_distillers_give_class_balanced_real_images(digits):
    assert {"random", "herding", "kcenter"} <= set(method_names())
    for method in ("random", "herding", "kcenter"):
        s = get_distiller(method).distill(
            digits, CoresetConfig(ipc=3, feature_epochs=1), torch.Generator().manual_seed(0)
        )
        assert s.method == method and s.class_counts() == [3] * 10 and s.seed == 0
        # every image is a real training image with its true label
        d = torch.cdist(s.images.flatten(1), digits.train_images.flatten(1))
        nearest = d.argmin(1)
        assert float(d.min(1).values.max()) < 1e-2  # cdist is not exact at 0
        assert torch.equal(digits.train_labels[nearest], s.labels)


def test_missing_classes_are_skipped_and_seed_reproduces(digits):
    keep = torch.nonzero(digits.train_labels < 3).flatten()
    part = digits.subset(keep)
    a = get_distiller("herding").distill(part, CoresetConfig(ipc=2, feature_epochs=0), torch.Generator().manual_seed(5))
    b = get_distiller("herding").distill(part, CoresetConfig(ipc=2, feature_epochs=0), torch.Generator().manual_seed(5))
    assert a.class_counts() == [2, 2, 2] + [0] * 7 and a.num_classes == 10
    assert torch.equal(a.images, b.images)
