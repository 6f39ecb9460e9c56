"""Partitions come from flwr-datasets partitioners and are reproducible from the seed."""

from __future__ import annotations

import pytest
import torch

from fedcond.errors import FedcondError
from fedcond.federated.partition import label_histogram, partition_indices


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_same_seed_same_partitions_other_seed_differs(digits, scheme):
    y = digits.train_labels
    a = partition_indices(y, 10, scheme, alpha=0.5, classes_per_client=2, seed=3)
    b = partition_indices(y, 10, scheme, alpha=0.5, classes_per_client=2, seed=3)
    c = partition_indices(y, 10, scheme, alpha=0.5, classes_per_client=2, seed=4)
    assert all(torch.equal(x, z) for x, z in zip(a, b))
    assert any(not torch.equal(x, z) for x, z in zip(a, c))
    # Disjoint, and (except pathological, which may leave classes unused) covering.
    allidx = torch.cat(a)
    assert allidx.numel() == allidx.unique().numel()
    if scheme != "pathological":
        assert allidx.numel() == y.numel()


def test_iid_is_label_balanced_even_on_sorted_labels():
    y = torch.arange(10).repeat_interleave(100)  # sorted: contiguous shards would be one class each
    parts = partition_indices(y, 5, "iid", seed=0)
    hist = label_histogram(y, parts, 10)
    assert all(sum(1 for v in row if v > 0) == 10 for row in hist)


def test_pathological_gives_k_classes_and_dirichlet_skews(digits):
    y = digits.train_labels
    hist = label_histogram(y, partition_indices(y, 10, "pathological", classes_per_client=2, seed=0), 10)
    assert all(sum(1 for v in row if v > 0) <= 2 for row in hist)
    skewed = label_histogram(y, partition_indices(y, 10, "dirichlet", alpha=0.1, seed=0), 10)
    assert max(max(row) / max(1, sum(row)) for row in skewed) > 0.5


def test_impossible_partition_is_a_user_error(digits):
    with pytest.raises(FedcondError):
        partition_indices(digits.train_labels[:5], 10, "iid")


def test_stored_partitions_are_computed_once_then_read_and_survive_a_corrupt_file(digits, tmp_path, monkeypatch):
    """Issue 15: every simulation process read the same partitions from disk instead of
    recomputing them (5 s for 1,000 MNIST clients, per process)."""
    import fedcond.federated.partition as partition

    y = digits.train_labels
    expected = partition_indices(y, 7, "dirichlet", alpha=0.5, seed=2)
    first = partition.stored_partitions(y, 7, "dirichlet", 0.5, 2, 2, folder=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(first, expected)) and len(first) == 7
    (stored,) = tmp_path.glob("*.pt")

    def no_compute(*args, **kwargs):
        raise AssertionError("recomputed instead of read")

    monkeypatch.setattr(partition, "partition_indices", no_compute)
    again = partition.stored_partitions(y, 7, "dirichlet", 0.5, 2, 2, folder=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again, expected))
    with pytest.raises(AssertionError, match="recomputed"):  # other settings, other file
        partition.stored_partitions(y, 7, "dirichlet", 0.5, 2, 3, folder=tmp_path)
    monkeypatch.undo()
    stored.write_bytes(b"not a checkpoint")
    repaired = partition.stored_partitions(y, 7, "dirichlet", 0.5, 2, 2, folder=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(repaired, expected))
