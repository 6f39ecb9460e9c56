"""The federated report's units and figure, and the centralised reference's cache."""

from __future__ import annotations

import json

import pytest

from fedcond.data import load_dataset
from fedcond.federated import references
from fedcond.federated.config import FederateConfig
from fedcond.federated.events import ReferenceFinished, ReferenceProgress
from fedcond.federated.report import markdown_table, plot_accuracy_vs_bytes
from fedcond.simulations.experiment import experiment_title


def _run(name: str, accs: list[float], upload_per_round: int) -> dict:
    rounds = [{"round": i + 1, "accuracy": a, "upload_bytes": (i + 1) * upload_per_round,
               "download_bytes": (i + 1) * upload_per_round} for i, a in enumerate(accs)]
    return {"strategy": name, "name": name, "final_accuracy": accs[-1], "rounds": rounds,
            "upload_bytes": rounds[-1]["upload_bytes"], "download_bytes": rounds[-1]["download_bytes"],
            "clients_lost_total": 0}


def test_tables_say_mib_and_mean_it():
    """192,389 bytes are 0.183 MiB (2^20 bytes), and the table says MiB, never MB."""
    table = markdown_table([_run("fedcond", [0.99], 192_389)], {"full_data_accuracy": 0.996, "full_data_epochs": 9},
                           [_run("random-real", [0.98], 192_389)], raw_bytes=100_000)
    assert "| upload MiB |" in table and " MB" not in table
    assert "| fedcond | 1 | 1 (last) | - | 0.9900 | 0.183 |" in table  # an old record: its last round, said so
    assert "0.095 MiB (100,000 bytes" in table


def test_the_table_reports_the_validation_round_and_its_bytes_not_the_best_test_round():
    from fedcond.simulations.server_app import selected_round

    run = _run("fedavg", [0.90, 0.97, 0.95], 1_000_000)
    for r, val in zip(run["rounds"], [0.80, 0.85, 0.91]):
        r["val_accuracy"] = val
    run.update(selected_round(run["rounds"]))
    table = markdown_table([run])
    # round 2 has the best test accuracy; validation picks round 3, and bytes count to it
    assert "| fedavg | 3 | 3 | 0.9100 | 0.9500 | 2.861 | 2.861 | 5.722 |" in table


def test_plot_has_title_and_both_panels(tmp_path):
    import matplotlib.image as mpimg

    cfg = FederateConfig(num_clients=10, alpha=0.5, seed=3)
    title = experiment_title(cfg)
    assert title == "digits: 10 clients, Dirichlet alpha=0.5, seed 3"
    runs = [_run("fedcond", [0.989], 192_389), _run("fedavg", [0.9, 0.95, 0.973], 6_000_000)]
    path = plot_accuracy_vs_bytes(runs, tmp_path / "p.png", {"full_data_accuracy": 0.996},
                                  [_run("random-real", [0.991], 190_000)], 110_000, title=title)
    image = mpimg.imread(path)
    assert image.shape[1] > image.shape[0] * 2  # two panels side by side


def test_reference_is_cached_by_its_inputs(tmp_path, monkeypatch):
    data = load_dataset("digits")
    cfg = FederateConfig(central_max_epochs=2, central_patience=1, strategies="fedcond")
    events = []
    first = references.cached_reference(tmp_path, data, cfg, on_event=events.append)
    assert [e.step for e in events if isinstance(e, ReferenceProgress)] == [1, 2]  # a bar, epoch by epoch
    assert events[-1] == ReferenceFinished(first)
    saved = json.loads((tmp_path / "reference.json").read_text())
    assert saved["reference"] == first and saved["inputs"]["seed"] == 0

    def no_training(*args, **kwargs):
        raise AssertionError("the upper bound was trained again")

    monkeypatch.setattr(references, "centralised_reference", no_training)
    events.clear()
    # other strategies, rounds or client work: the upper bound's inputs are unchanged
    again = references.cached_reference(tmp_path, data, FederateConfig(central_max_epochs=2, central_patience=1,
                                                                       strategies="fedavg", rounds=2, ipc=1),
                                        on_event=events.append)
    assert again == first and events == [ReferenceFinished(first, from_checkpoint=True)]
    with pytest.raises(AssertionError, match="trained again"):  # another seed is another upper bound
        references.cached_reference(tmp_path, data, FederateConfig(central_max_epochs=2, central_patience=1, seed=1))
