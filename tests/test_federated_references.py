"""The references of a comparison: which runs are planned, the raw-data bytes, the upper bound."""

from __future__ import annotations

from fedcond.federated.config import FederateConfig
from fedcond.federated.references import (
    HERDING,
    HERDING_MOSAIC,
    RANDOM_REAL,
    RANDOM_REAL_MOSAIC,
    STORAGE_DTYPE,
    plan_runs,
    raw_data_upload,
)


def test_fedcond_brings_its_references_and_the_baselines_none():
    cfg = FederateConfig(method="dm", storage_dtype="float32", storage_dtypes="float32,float16,uint8")
    runs = plan_runs(cfg, ["fedcond", "fedavg"])
    assert [r.name for r in runs] == ["fedcond", "fedavg", "fedcond-float16", "fedcond-uint8", RANDOM_REAL, HERDING]
    assert [r.kind for r in runs] == [None, None, STORAGE_DTYPE, STORAGE_DTYPE, RANDOM_REAL, HERDING]
    assert runs[5].cfg.method == "herding" and runs[5].cfg.ipc == cfg.ipc and runs[5].cfg.dp_epsilon == 0
    assert runs[3].cfg.storage_dtype == "uint8" and runs[3].cfg.method == "dm"
    random_real = runs[4].cfg
    # same bytes as FedCond: same ipc and storage dtype, one upload, random real images
    assert (random_real.method, random_real.ipc, random_real.storage_dtype, random_real.effective_rounds) == (
        "random",
        10,
        "float32",
        1,
    )
    assert [r.name for r in plan_runs(cfg, ["fedavg", "fedprox"])] == ["fedavg", "fedprox"]
    # FedCond on random images is its own random reference; one dtype means no dtype runs
    alone = FederateConfig(method="random", storage_dtypes="float32")
    assert [r.name for r in plan_runs(alone, ["fedcond"])] == ["fedcond", HERDING]
    assert [r.name for r in plan_runs(FederateConfig(method="herding", storage_dtypes="float32"), ["fedcond"])] == [
        "fedcond", RANDOM_REAL]


def test_mosaic_fedcond_is_also_judged_against_random_real_mosaics():
    cfg = FederateConfig(method="dm", method_options='{"factor": 2, "batch_real": 64}', storage_dtypes="uint8",
                         storage_dtype="uint8")
    runs = plan_runs(cfg, ["fedcond"])
    assert [(r.name, r.kind) for r in runs] == [
        ("fedcond", None), (RANDOM_REAL, RANDOM_REAL), (f"{RANDOM_REAL}-f2", RANDOM_REAL_MOSAIC),
        (HERDING, HERDING), (f"{HERDING}-f2", HERDING_MOSAIC),
    ]
    assert runs[4].cfg.method == "herding" and runs[4].cfg.method_option_values == {"factor": 2}
    plain, mosaic = runs[1].cfg, runs[2].cfg
    assert plain.method_option_values == {} and mosaic.method_option_values == {"factor": 2}
    assert (mosaic.method, mosaic.ipc, mosaic.storage_dtype) == ("random", cfg.ipc, "uint8")


def test_raw_data_bytes_are_the_uint8_partitions(digits):
    from fedcond.federated.partition import partition_indices

    parts = partition_indices(digits.train_labels, 3, "dirichlet", 0.5, seed=0)
    raw = raw_data_upload(digits, parts)
    pixels = digits.train_images[0].numel()
    n = digits.train_images.shape[0]
    assert raw["images"] == n and len(raw["per_client_bytes"]) == 3
    # one byte per pixel and eight per label, plus Flower's headers
    assert n * (pixels + 8) < raw["upload_bytes"] < n * (pixels + 8) + 3 * 5000


def test_centralised_upper_bound_is_trained(digits):
    """Trained to a plateau it beats what FedAvg reaches on digits (0.976), unlike the old
    fixed 20 epochs (0.969)."""
    from fedcond.federated.references import centralised_reference

    ref = centralised_reference(digits, FederateConfig())
    assert ref["full_data_accuracy"] >= 0.98
    assert ref["full_data_best_epoch"] <= ref["full_data_epochs"] <= 100 and ref["full_data_lr_decays"] >= 1


def test_a_killed_plateau_training_goes_on_from_its_last_epoch_with_the_same_result(tmp_path):
    """The upper bound on CIFAR-10 is an hour of CPU: a kill costs one epoch, and the resumed
    run ends where an uninterrupted one does (weights, kept epoch, learning-rate drops)."""
    import time

    import pytest
    import torch
    from torch import nn

    from fedcond.federated.references import train_to_plateau

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(300, 12, generator=gen)
    labels = (images[:, 0] + 0.5 * torch.randn(300, generator=gen) > 0).long()  # noisy: the held-out loss plateaus

    def model() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 2))

    kw = {"max_epochs": 40, "patience": 2, "lr": 0.1, "batch_size": 32}
    whole = model()
    expected = train_to_plateau(whole, images, labels, torch.Generator().manual_seed(5), **kw)
    assert expected.lr_decays == 2 and expected.epochs < 40  # it stopped on the plateau, after both drops

    class Killed(Exception):
        pass

    def kill_at(epoch: int):
        def on_epoch(e, n, m):
            if e == epoch:
                raise Killed
        return on_epoch

    path = tmp_path / "plateau.pt"
    for kill in (3, expected.epochs - 1):  # before and after a learning-rate drop
        with pytest.raises(Killed):
            train_to_plateau(model(), images, labels, torch.Generator().manual_seed(5), on_epoch=kill_at(kill),
                             checkpoint=path, **kw)
    seen: list[int] = []
    resumed = model()
    start = time.perf_counter()
    result = train_to_plateau(resumed, images, labels, torch.Generator().manual_seed(5),
                              on_epoch=lambda e, n, m: seen.append(e), checkpoint=path, **kw)
    last_part = time.perf_counter() - start
    assert seen == [expected.epochs]  # only the epoch after the last saved one ran
    assert result == expected
    assert result.seconds > last_part  # the killed parts' epochs count in its training time
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    # Other settings do not go on from that file: they train from the first epoch.
    seen.clear()
    train_to_plateau(model(), images, labels, torch.Generator().manual_seed(5), on_epoch=lambda e, n, m: seen.append(e),
                     checkpoint=path, **{**kw, "lr": 0.05})
    assert seen[0] == 1
