"""DistilledBuffer: budget never exceeded, class balance kept across experiences, bytes."""

from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

from fedcond.continual.benchmarks import canonical_name, make_benchmark
from fedcond.continual.budget import class_quotas, herding_order
from fedcond.continual.buffer import DistilledBuffer, DistillSpec
from fedcond.continual.runner import stored_images
from fedcond.errors import FedcondError


@pytest.fixture(scope="module")
def bench(digits):
    return make_benchmark("split-digits", data=digits, train_fraction=0.25)


def test_quotas_sum_to_budget_differ_by_one_and_ignore_order():
    for mem in (0, 1, 7, 10, 23, 200):
        for n in (1, 2, 3, 10):
            q = class_quotas(mem, range(n))
            assert sum(q.values()) == mem and max(q.values()) - min(q.values()) <= 1
    assert class_quotas(10, [5, 1, 3]) == class_quotas(10, [3, 5, 1]) == {1: 4, 3: 3, 5: 3}
    with pytest.raises(ValueError):
        class_quotas(-1, [0])


def test_herding_order_picks_the_row_nearest_the_mean_first():
    x = torch.tensor([[0.0], [10.0], [4.0], [6.0]])
    assert herding_order(x, 1).tolist() == [2]  # mean 5: 4 and 6 tie, lowest index wins
    assert sorted(herding_order(x, 4).tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("mem", [10, 23, 50])
def test_buffer_stays_within_budget_and_class_balanced(bench, mem):
    buf = DistilledBuffer(mem, DistillSpec(method="random", seed=1), num_classes=10)
    seen: set[int] = set()
    for exp in bench.scenario.train_stream:
        before = {k: e.images.clone() for k, e in buf.entries.items()}
        buf.post_adapt(None, exp)
        seen |= set(exp.classes_in_this_experience)
        counts = buf.class_counts()
        assert len(buf.buffer) == sum(counts.values()) <= mem
        assert {c for (_, c) in counts} == seen  # every class seen so far is kept
        assert max(counts.values()) - min(counts.values()) <= 1
        assert counts == {(0, c): q for c, q in class_quotas(mem, seen).items()}  # the whole budget is used
        # Avalanche view: targets match the stored classes, one task label
        assert sorted(buf.buffer.targets) == sorted(c for (_, c), n in counts.items() for _ in range(n))
        assert set(buf.buffer.targets_task_labels) == {0}
        # old classes shrink by sub-selection: survivors are images the class already had
        for key, old in before.items():
            kept = buf.entries[key].images
            assert all(any(torch.equal(k, o) for o in old) for k in kept)
    assert buf.nbytes == buf.synthetic_set().nbytes > mem * 8 * 8 * 4


def test_resize_cuts_classes_to_new_quota(bench):
    buf = DistilledBuffer(40, DistillSpec(method="random"), num_classes=10)
    for exp in list(bench.scenario.train_stream)[:2]:
        buf.post_adapt(None, exp)
    buf.resize(None, 6)
    assert len(buf.buffer) == 6 and sorted(buf.class_counts().values()) == [1, 1, 2, 2]


def test_soft_labels_kept_aside_aligned_with_hard_targets(bench):
    spec = DistillSpec(method="dm", iterations=2, options={"learn_labels": True, "dsa": False})
    buf = DistilledBuffer(8, spec, num_classes=10)
    for exp in list(bench.scenario.train_stream)[:2]:
        buf.post_adapt(None, exp)
    assert buf.soft_targets is not None and buf.soft_targets.shape == (8, 10)
    assert torch.allclose(buf.soft_targets.sum(1), torch.ones(8), atol=1e-5)
    assert buf.soft_targets.argmax(1).tolist() == list(buf.buffer.targets)
    assert buf.synthetic_set().soft_labels


def test_user_errors():
    with pytest.raises(FedcondError, match="unknown method"):
        DistillSpec(method="nope")
    with pytest.raises(FedcondError, match="rebalance"):
        DistillSpec(method="random", rebalance="shuffle")
    with pytest.raises(FedcondError, match="unknown benchmark"):
        canonical_name("split-imagenet")
    assert canonical_name("SplitMNIST") == "split-mnist" and canonical_name("SplitCIFAR-10") == "split-cifar10"


@pytest.mark.parametrize("rebalance,mem", [("nested", 10), ("nested", 23), ("redistill", 10)])
def test_rebalance_modes_stay_within_budget_and_class_balanced(bench, rebalance, mem):
    spec = DistillSpec(method="dm", iterations=2, options={"dsa": False}, rebalance=rebalance, seed=2)
    buf = DistilledBuffer(mem, spec, num_classes=10)
    seen: set[int] = set()
    for exp in bench.scenario.train_stream:
        before = {k: e.images.clone() for k, e in buf.entries.items()}
        cores = dict(buf.cores)
        buf.post_adapt(None, exp)
        seen |= set(exp.classes_in_this_experience)
        counts = buf.class_counts()
        assert len(buf.buffer) == sum(counts.values()) <= mem
        assert counts == {(0, c): q for c, q in class_quotas(mem, seen).items()}
        assert sorted(buf.buffer.targets) == sorted(c for (_, c), n in counts.items() for _ in range(n))
        if rebalance == "nested":
            # old classes keep their standalone core (the final quota) untouched; rest images go first
            final = max(1, mem // 10)
            for key, old in before.items():
                core = min(cores.get(key, old.shape[0]), counts[key])
                assert torch.equal(buf.entries[key].images[:core], old[:core])
                assert core >= min(final, counts[key])


@pytest.mark.parametrize("method,rebalance", [("random", "subselect"), ("dm", "nested")])
def test_a_mosaic_buffer_counts_stored_images_and_replays_their_tiles(bench, method, rebalance):
    options = {"factor": 2} if method == "random" else {"factor": 2, "dsa": False}
    spec = DistillSpec(method=method, iterations=2, options=options, rebalance=rebalance, seed=3)
    buf, plain = DistilledBuffer(10, spec, num_classes=10), DistilledBuffer(10, DistillSpec(method="random"), 10)
    seen: set[int] = set()
    for exp in bench.scenario.train_stream:
        buf.post_adapt(None, exp)
        plain.post_adapt(None, exp)
        seen |= set(exp.classes_in_this_experience)
        counts = buf.class_counts()
        # the budget counts stored mosaics; replay sees 4 tiles of each, labelled by its class
        assert counts == {(0, c): q for c, q in class_quotas(10, seen).items()}
        assert len(buf.buffer) == buf.images.shape[0] == 4 * sum(counts.values())
        assert sorted(buf.buffer.targets) == sorted(c for (_, c), n in counts.items() for _ in range(4 * n))
        assert buf.images.shape[1:] == buf.entries[(0, min(seen))].images.shape[1:]
    sset = buf.synthetic_set()
    assert sset.factor == 2 and sset.num_images == 10
    assert torch.equal(sset.decoded().images, buf.images)
    # a mosaic costs the bytes of one image: the same pixels as a plain buffer, a header one field longer
    assert sset.images.shape == plain.synthetic_set().images.shape
    assert buf.nbytes == sset.nbytes and 0 < buf.nbytes - plain.nbytes <= 16
    assert stored_images(buf) == stored_images(plain) == 10 and len(buf.buffer) == 40  # what results record
