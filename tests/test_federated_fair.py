"""Fair by construction: one recipe reaches every federated learner, validation picks every
reported round (the test split never does), and the real-image controls cost FedCond's bytes."""

from __future__ import annotations

import torch

from fedcond.federated import client_training, references, server_training
from fedcond.federated.config import FederateConfig
from fedcond.federated.data_cache import federated_data, federated_validation, get_dataset, validation_indices
from fedcond.federated.partition import run_partitions
from fedcond.recipe import Recipe
from fedcond.simulations.server_app import selected_round

CFG = FederateConfig(dataset="digits", num_clients=4, val_fraction=0.1, seed=3)


def test_the_validation_split_is_held_out_of_every_partition_per_class():
    full = get_dataset("digits")
    val = validation_indices(full.train_labels, 0.1, seed=3)
    counts = torch.bincount(full.train_labels[val], minlength=10)
    expected = torch.round(0.1 * torch.bincount(full.train_labels, minlength=10).float()).long()
    assert torch.equal(counts, expected)
    assert torch.equal(val, validation_indices(full.train_labels, 0.1, seed=3))  # every process draws alike
    assert not torch.equal(val, validation_indices(full.train_labels, 0.1, seed=4))  # a seed changes it
    data, (val_images, val_labels) = federated_data(CFG), federated_validation(CFG)
    assert data.train_labels.shape[0] + val_labels.shape[0] == full.train_labels.shape[0]
    parts = run_partitions(CFG)
    assert sum(p.numel() for p in parts) == data.train_labels.shape[0]  # clients split exactly what is left
    # no validation image is in the run's train split (images compared row by row)
    train_rows = {tuple(x.flatten().tolist()) for x in data.train_images}
    clash = sum(tuple(x.flatten().tolist()) in train_rows for x in val_images)
    duplicates = full.train_images.shape[0] - len({tuple(x.flatten().tolist()) for x in full.train_images})
    assert clash <= duplicates  # digits has a few identical images; nothing beyond them


def test_the_reported_round_is_the_best_validation_round_even_when_the_test_split_disagrees():
    rounds = [{"round": r, "accuracy": test, "val_accuracy": val, "upload_bytes": 10 * r, "download_bytes": r}
              for r, (val, test) in enumerate([(0.80, 0.95), (0.90, 0.85), (0.90, 0.99), (0.70, 0.60)], start=1)]
    chosen = selected_round(rounds)
    # round 1 has the best test accuracy, round 3 ties round 2 on validation: the earliest best validation wins
    assert chosen["selected_round"] == 2 and chosen["selected_accuracy"] == 0.85
    assert chosen["selected_upload_bytes"] == 20 and chosen["selected_val_accuracy"] == 0.90


def test_the_recipe_reaches_fedavg_clients_the_server_and_the_upper_bound(monkeypatch):
    cfg = FederateConfig(dataset="digits", augment="crop", server_epochs=1, central_max_epochs=1, seed=3,
                         val_fraction=0.1)
    seen: dict[str, object] = {}

    class Spy:
        families = ("crop",)

        def __init__(self, who):
            self.who = who

        def __call__(self, images, generator):
            seen[self.who] = seen.get(self.who, 0) + 1
            return images

    monkeypatch.setattr(Recipe, "augmenter", lambda self, channels: Spy(self.augment))
    data = federated_data(cfg)
    model = server_training.new_model(data, cfg)
    client_training.local_train(model, data.train_images[:64], data.train_labels[:64], 1, 0.01, 32,
                                torch.Generator().manual_seed(0), recipe=cfg.recipe)
    opt_calls = seen.pop("crop")
    assert opt_calls == 2  # both client mini-batches augmented

    captured = {}
    real_train_model = server_training.train_model

    def spy_train_model(*args, **kwargs):
        captured.update(kwargs)
        return real_train_model(*args, **kwargs)

    monkeypatch.setattr(server_training, "train_model", spy_train_model)
    from fedcond.distill import get_distiller

    random = get_distiller("random")
    sset = random.distill(data, random.config_class(ipc=1), torch.Generator().manual_seed(0))
    server_training.train_on_pool(server_training.new_model(data, cfg), [sset], cfg, server_round=1)
    assert captured["weight_decay"] == cfg.recipe.weight_decay and captured["momentum"] == cfg.recipe.momentum
    assert seen.pop("crop") >= 1  # the server's batches went through the same augmentation

    plateau_kwargs = {}
    real_plateau = references.train_to_plateau
    monkeypatch.setattr(references, "train_to_plateau",
                        lambda *a, **k: (plateau_kwargs.update(k), real_plateau(*a, **k))[1])
    ref = references.centralised_reference(data, cfg)
    assert plateau_kwargs["recipe"] == cfg.recipe
    assert plateau_kwargs["validation"][1].shape[0] == federated_validation(cfg)[1].shape[0]
    assert seen.pop("crop") >= 1 and ref["full_data_recipe"] == cfg.recipe.to_json()


def test_the_real_image_controls_upload_fedcond_bytes_within_one_percent():
    from flwr.app import RecordDict

    from fedcond.distill import get_distiller
    from fedcond.federated.records import SET_ARRAYS_KEY, SET_META_KEY, message_nbytes, set_to_records

    data = federated_data(CFG)
    for factor in (1, 2):
        sizes = {}
        for method in ("dm", "random", "herding"):
            distiller = get_distiller(method)
            options = {"iterations": 2, "precision": "float32"} if method == "dm" else {}
            config = distiller.config_class(ipc=3, factor=factor, **options)
            sset = distiller.distill(data, config, torch.Generator().manual_seed(0))
            arrays, meta = set_to_records(sset)
            sizes[method] = message_nbytes(RecordDict({SET_ARRAYS_KEY: arrays, SET_META_KEY: meta}))
        for control in ("random", "herding"):
            assert abs(sizes[control] / sizes["dm"] - 1) <= 0.01, (factor, sizes)
