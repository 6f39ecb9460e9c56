"""Shared fixtures: small data made in-process (scikit-learn's digits), no network."""

from __future__ import annotations

import pytest
import torch

from fedcond.data import ImageDataset, load_dataset

# The models under test are tiny: one thread is several times faster than two on a
# shared 2-core machine, and results do not depend on the thread count.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> ImageDataset:
    """scikit-learn's bundled 8x8 digits with fedcond's fixed split."""
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_public(digits) -> ImageDataset:
    """The same digits under fixed public normalisation constants (what DP methods need)."""
    from fedcond.data import renormalized

    return renormalized(digits, "public")


@pytest.fixture()
def tiny_set(digits):
    """A small valid SyntheticSet: 2 images per class from digits."""
    from fedcond.synthetic import SyntheticSet

    idx = torch.cat([torch.nonzero(digits.train_labels == c).flatten()[:2] for c in range(10)])
    return SyntheticSet(
        images=digits.train_images[idx].clone(), labels=digits.train_labels[idx].clone(),
        classes=digits.classes, mean=digits.mean, std=digits.std,
        method="random", ipc=2, dataset="digits", seed=0, config={"ipc": 2},
    )


@pytest.fixture()
def task_identity():
    """Flower messages read run/node/task ids from TaskIdentity, as inside a running ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
