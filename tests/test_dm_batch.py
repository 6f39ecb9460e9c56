"""Issue 15: DM for many clients at once (stacked networks, one process) gives each client
the set its own one-at-a-time run gives, for the same seeds."""

import pytest
import torch

from fedcond.distill import get_distiller
from fedcond.distill.dm import DMConfig
from fedcond.distill.dm_batch import batchable
from fedcond.federated.partition import partition_indices


def test_batched_clients_get_the_sets_of_their_one_at_a_time_runs(digits):
    parts = partition_indices(digits.train_labels, 20, "dirichlet", alpha=0.5, seed=0)
    clients = [digits.subset(p) for p in parts[:5]]  # 30-120 images, 4-10 classes, skewed
    config = DMConfig(ipc=2, iterations=10, real_precision="float32")  # the float32 path, AMX or not
    seeds = [1009 * i + 7 for i in range(len(clients))]
    alone = [get_distiller("dm").distill(c, config, torch.Generator().manual_seed(s)) for c, s in zip(clients, seeds)]
    together = get_distiller("dm").distill_many(clients, config, [torch.Generator().manual_seed(s) for s in seeds])
    assert len({a.num_images for a in alone}) > 1  # clients of different sizes share the batch
    for a, b in zip(alone, together):
        assert torch.equal(a.labels, b.labels) and a.config == b.config and a.seed == b.seed
        assert a.method == b.method == "dm"
        # Stacked (grouped) convolutions round differently from one network's: the same
        # set up to that rounding. (DM amplifies rounding: on MNIST IPC1 a 1e-6 change of
        # the start grows to 0.07 in 5 iterations, whichever way it is computed.)
        assert torch.allclose(a.images, b.images, atol=1e-4), (a.images - b.images).abs().max()
    other = get_distiller("dm").distill_many(clients, config, [torch.Generator().manual_seed(s + 1) for s in seeds])
    assert not torch.allclose(other[0].images, together[0].images, atol=1e-2)  # the seeds matter


@pytest.mark.parametrize("option", [{"learn_labels": True}, {"zca": True}, {"model": "convnet-bn"}, {"rho": 0.1},
                                    {"trained_networks": 2}, {"real_precision": "bfloat16"}])
def test_settings_the_batched_path_does_not_run_go_one_at_a_time(digits, option):
    assert batchable(DMConfig(ipc=1), digits)
    assert not batchable(DMConfig(ipc=1, **option), digits)


def test_settings_the_batched_path_does_not_run_give_the_one_at_a_time_sets(digits):
    clients = [digits.subset(torch.arange(0, 200)), digits.subset(torch.arange(200, 400))]
    config = DMConfig(ipc=1, iterations=3, learn_labels=True)
    seen = []
    many = get_distiller("dm").distill_many(clients, config, [torch.Generator().manual_seed(s) for s in (3, 4)],
                                            callbacks=[lambda it, total, metrics: seen.append(it)])
    for data, seed, sset in zip(clients, (3, 4), many):
        alone = get_distiller("dm").distill(data, config, torch.Generator().manual_seed(seed))
        assert torch.equal(sset.images, alone.images) and torch.equal(sset.labels, alone.labels)
    assert seen == [3, 3]  # each client's own run reports


def test_the_batched_path_reports_progress(digits):
    clients = [digits.subset(torch.arange(0, 200)), digits.subset(torch.arange(200, 400))]
    seen = []
    get_distiller("dm").distill_many(clients, DMConfig(ipc=1, iterations=5, log_every=2),
                                     [torch.Generator().manual_seed(s) for s in (3, 4)],
                                     callbacks=[lambda it, total, metrics: seen.append((it, total, metrics["loss"]))])
    assert [(it, total) for it, total, _ in seen] == [(2, 5), (4, 5), (5, 5)]
    assert all(loss > 0 for _, _, loss in seen)
