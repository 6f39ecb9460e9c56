"""benchmarks/federated_benchmark.py's report: references shown where a cell has them, dashes where
it has none, seeds without a finished cell left out, multi-formation cells judged against both
random-real references."""

from __future__ import annotations

import json

from benchmark_scripts import load_script  # tests/, a test-only helper


def _load():
    return load_script("federated_benchmark")


def _run(strategy: str, accuracies: list[float], mb_per_round: float, reference: str | None = None,
         name: str | None = None, ipc: int | None = None, val: list[float] | None = None) -> dict:
    """A run's record; its validation accuracies are ``val`` (default: the test accuracies)."""
    rounds = [{"round": i + 1, "accuracy": a, "val_accuracy": v, "upload_bytes": (i + 1) * mb_per_round * 2**20}
              for i, (a, v) in enumerate(zip(accuracies, val or accuracies))]
    from fedcond.simulations.server_app import selected_round

    run = {"strategy": strategy, "rounds": rounds, "final_accuracy": accuracies[-1],
           "upload_bytes": rounds[-1]["upload_bytes"], "ipc": ipc, **selected_round(rounds)}
    if reference:
        run.update({"reference": reference, "name": name})
    return run


def test_report_shows_each_cells_references_and_skips_unfinished_seeds(tmp_path):
    bench = _load()
    cells = {
        "fedcond_ipc1": {"runs": [_run("fedcond", [0.90], 0.1, ipc=1)],
                         "reference_runs": [_run("fedcond", [0.94], 0.1, "random-real", "random-real", 1)]},
        "fedcond_ipc1_f2": {"runs": [_run("fedcond", [0.96], 0.1, ipc=1)],
                            "reference_runs": [
                                _run("fedcond", [0.94], 0.1, "random-real", "random-real", 1),
                                _run("fedcond", [0.95], 0.1, "random-real-mosaic", "random-real-f2", 1),
                            ]},
        "fedavg": {"runs": [{**_run("fedavg", [0.95, 0.97, 0.99, 0.99], 10.0), "precision": "bfloat16"}],
                   "wall_seconds": 120.0, "resumed": True},
        "fedcond-iterative": {"runs": [_run("fedcond-iterative", [0.93, 0.98, 0.985], 1.2)]},
    }
    summary = bench.summarise(cells, 0.005)
    rows = {r["cell"]: r for r in summary["fedcond"]}
    assert "random_real_mosaic_accuracy" not in rows["fedcond_ipc1"]
    assert round(rows["fedcond_ipc1_f2"]["gain_over_random_real_pts"], 6) == 2.0
    assert round(rows["fedcond_ipc1_f2"]["gain_over_random_real_mosaic_pts"], 6) == 1.0
    assert summary["fedavg_plateau"]["round"] == 3  # first round within the tolerance of the best
    # communication to the same accuracy: FedAvg's first round at least as accurate as the cell
    f2 = rows["fedcond_ipc1_f2"]
    assert (f2["fedavg_round_to_match"], f2["fedavg_traffic_to_match_bytes"]) == (2, 20 * 2**20)
    report = {
        "dataset": "toy", "num_clients": 10, "command": "python benchmarks/federated_benchmark.py", "machine": "cpu",
        "versions": {"fedcond": "0"}, "wall_seconds": 60.0, "peak_memory_bytes": 2**30,
        "settings": {"alpha=0.5": {"seed=0": {"cells": cells, "summary": summary},
                                   "seed=1": {"cells": {}}}},  # seed 1: nothing finished yet
    }
    bench.write_report(report, tmp_path)
    md = (tmp_path / "federated_toy.md").read_text()
    assert "### seed=0" in md and "### seed=1" not in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| fedcond_ipc1 |"))
    assert "| 0.9400 | -4.0 | – | – |" in line and "nan" not in md
    mosaic = next(ln for ln in md.splitlines() if ln.startswith("| fedcond_ipc1_f2 |"))
    assert "| 0.9400 | +2.0 | 0.9500 | +1.0 |" in mosaic
    assert json.loads((tmp_path / "federated_toy.json").read_text())["dataset"] == "toy"
    assert (tmp_path / "federated_toy_alpha0.5.png").stat().st_size > 0
    # a cell finished by a resumed invocation says its wall time is only the resumed part
    assert "fedavg 2.0 bfloat16 (after resuming)" in md
    assert "MIXED PRECISION" not in md  # only FedAvg's cell names its arithmetic here
    cells["fedcond_ipc1"]["runs"][0]["precision"] = "float32"
    bench.write_report(report, tmp_path)
    assert "**MIXED PRECISION: the cells ran in bfloat16 and float32" in (tmp_path / "federated_toy.md").read_text()
    # the iterative run's last round sends 3.6 MiB, over a tenth of FedAvg's 30 MiB: its round 2 fits
    assert "- fedcond-iterative within a tenth of FedAvg's traffic to its plateau (3.0 MiB): round 2, 0.9800 after " \
           "2.4 MiB up + down, 1.00 pts below the plateau; goal (within 3 pts) met" in md
    assert "- FedAvg reaches fedcond_ipc1's 0.9000 in round 1, after 10.0 MiB up + down; fedcond_ipc1 sends " \
           "0.10 MiB (1.0 % of it)" in md


def test_the_plateau_and_the_grid_winner_are_chosen_on_validation_never_on_test():
    bench = _load()
    # test accuracy peaks in round 2, validation in round 4: the plateau is round 4's test accuracy
    run = _run("fedavg", [0.90, 0.99, 0.93, 0.95], 10.0, val=[0.80, 0.85, 0.88, 0.91])
    plateau = bench.plateau(run, 0.005)
    assert (plateau["accuracy"], plateau["best_round"], plateau["chosen_on"]) == (0.95, 4, "validation")
    grid = [{"lr": 0.01, "local_epochs": 1, "val_accuracy": 0.9}, {"lr": 0.05, "local_epochs": 2, "val_accuracy": 0.8},
            {"lr": 0.01, "local_epochs": 2, "val_accuracy": 0.7}, {"lr": 0.05, "local_epochs": 1, "val_accuracy": 0.6}]
    assert bench.grid_edges(grid, grid[0]) == ["learning rate 0.01 (lowest of the grid)",
                                               "local epochs 1 (lowest of the grid)"]


def test_report_command_runs_every_cell_and_pastes_into_a_shell():
    bench = _load()
    argv = ["benchmarks/federated_benchmark.py", "-o", '{"batch_real": 64}', "--cells", "", "--seeds", "0,1"]
    assert bench.reproducing_command(argv) == (
        "python benchmarks/federated_benchmark.py -o '{\"batch_real\": 64}' --seeds 0,1"
    )
    assert "--cells" not in bench.reproducing_command([*argv[:3], "--cells=fedavg"])


def test_a_finished_cell_is_not_read_back_under_other_settings(tmp_path):
    import pytest

    from fedcond.federated.config import FederateConfig

    bench = _load()
    ran = FederateConfig(dataset="digits", lr=0.05)
    (tmp_path / "cell.json").write_text(json.dumps({"config": ran.to_json(), "runs": []}))
    # where it ran does not matter; what it ran does
    assert bench.run_cell(FederateConfig(dataset="digits", lr=0.05, data_dir="/elsewhere"), ["fedavg"], tmp_path,
                          None)["runs"] == []
    with pytest.raises(SystemExit, match="lr: 0.05, now 0.1"):
        bench.run_cell(FederateConfig(dataset="digits", lr=0.1), ["fedavg"], tmp_path, None)


def test_a_finished_cell_given_more_rounds_goes_on_and_adds_its_wall_time(tmp_path, monkeypatch):
    import pytest

    import fedcond.simulations.experiment as experiment
    from fedcond.federated.config import FederateConfig

    bench = _load()
    ran = FederateConfig(dataset="digits", strategy="fedavg", rounds=3)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "cell.json").write_text(json.dumps({"config": ran.to_json(), "wall_seconds": 100.0, "runs": []}))
    calls = []

    def fake_experiment(cfg, strategies, folder, resources, reference):
        calls.append(cfg.rounds)
        return {"runs": [_run("fedavg", [0.5] * cfg.rounds, 1.0)], "reference_runs": [], "raw_data_upload_bytes": 1}

    monkeypatch.setattr(experiment, "run_experiment", fake_experiment)
    with pytest.raises(SystemExit, match="rounds: 3, now 2"):  # fewer rounds than it ran: refused
        bench.run_cell(FederateConfig(dataset="digits", strategy="fedavg", rounds=2), ["fedavg"], tmp_path, None)
    cell = bench.run_cell(FederateConfig(dataset="digits", strategy="fedavg", rounds=5), ["fedavg"], tmp_path, None)
    assert calls == [5] and len(cell["runs"][0]["rounds"]) == 5 and cell["config"]["rounds"] == 5
    assert cell["wall_seconds"] >= 100.0 and cell["resumed"]
    assert json.loads((tmp_path / "cell.json").read_text())["config"]["rounds"] == 5


def test_fedcond_cells_alone_run_every_seed_without_a_fedavg_grid(tmp_path, monkeypatch):
    """``--cells fedcond`` on a fresh scratch (e.g. the GPU's) needs no FedAvg grid: every seed's FedCond
    cells run; asking for FedAvg without a finished grid still stops with the reason."""
    import pytest

    bench = _load()
    ran = []

    def fake_cell(cfg, strategies, folder, memory, resources=None):
        ran.append((cfg.seed, folder.name, cfg.ipc))
        refs = [] if folder.name.endswith("_f2") else [_run("fedcond", [0.8], 0.1, "random-real", "random-real", 1)]
        return {"config": cfg.to_json(), "wall_seconds": 1.0, "runs": [_run("fedcond", [0.9], 0.1, ipc=cfg.ipc)],
                "reference_runs": refs}

    monkeypatch.setattr(bench, "run_cell", fake_cell)
    common = ["--dataset", "digits", "--alphas", "0.5", "--seeds", "0,1", "--ipcs", "1", "--factors", "1,2",
              "--scratch", str(tmp_path / "scratch"), "--out", str(tmp_path / "out")]
    bench.main([*common, "--cells", "fedcond"])
    assert ran == [(0, "fedcond_ipc1", 1), (0, "fedcond_ipc1_f2", 1), (1, "fedcond_ipc1", 1), (1, "fedcond_ipc1_f2", 1)]
    report = json.loads((tmp_path / "out" / "federated_digits.json").read_text())
    assert set(report["settings"]["alpha=0.5"]) == {"seed=0", "seed=1"}
    md = (tmp_path / "out" / "federated_digits.md").read_text()
    assert ("- fedcond_ipc1: 0.900 ± 0.000 (95 % CI 0.900 to 0.900, n = 2); random-real 0.800 ± 0.000 (95 % CI "
            "0.800 to 0.800, n = 2), paired gain +10.0 ± 0.0 (95 % CI +10.0 to +10.0, n = 2) pts (holds)") in md
    # no references: no empty clause, only its bytes
    assert "- fedcond_ipc1_f2: 0.900 ± 0.000 (95 % CI 0.900 to 0.900, n = 2); at 0.10 MiB up + down\n" in md
    with pytest.raises(SystemExit, match="no FedAvg grid cell finished"):
        bench.main([*common, "--cells", "fedavg"])


def test_over_the_seeds_fedavg_and_fedprox_plateaus_with_their_bytes(tmp_path):
    bench = _load()
    settings = {}
    for seed, (fedavg, fedprox) in enumerate([([0.95, 0.97, 0.99], [0.96, 0.98]), ([0.95, 0.98], None)]):
        cells = {"fedcond_ipc10": {"runs": [_run("fedcond", [0.98], 0.7, ipc=10)]},
                 "fedavg": {"runs": [_run("fedavg", fedavg, 10.0)]}}
        if fedprox:
            cells["fedprox"] = {"runs": [_run("fedprox", fedprox, 10.0)]}
        settings[f"seed={seed}"] = {"cells": cells, "summary": bench.summarise(cells, 0.005)}
    report = {"dataset": "toy", "num_clients": 10, "command": "python x.py", "machine": "cpu", "versions": {},
              "wall_seconds": 1.0, "peak_memory_bytes": 1, "settings": {"alpha=0.5": settings}}
    bench.write_report(report, tmp_path)
    md = (tmp_path / "federated_toy.md").read_text()
    # plateaus reached in round 3 (30 MiB) and round 2 (20 MiB); FedProx ran on one seed only
    assert "- fedavg plateau: 0.985 ± 0.007 (95 % CI 0.921 to 1.049, n = 2) after 20–30 MiB uploaded" in md
    assert "- fedprox plateau: 0.980 (n = 1, no interval) after 20 MiB uploaded" in md


def test_the_settings_come_from_federate_config(tmp_path, monkeypatch):
    """The benchmark declares no setting of its own: FederateConfig's fields with its four
    benchmark-sized defaults; the cells run what they ran when the flags were written out
    (DM's own 100 iterations, the explicit default then), and wait up to 6 hours for a round."""
    from fedcond.federated.config import FederateConfig

    bench = _load()
    ran = {}

    def fake_cell(cfg, strategies, folder, memory, resources=None):
        ran[folder.name] = cfg
        return {"config": cfg.to_json(), "runs": [], "reference_runs": []}

    monkeypatch.setattr(bench, "run_cell", fake_cell)
    bench.main(["--alphas", "0.5", "--ipcs", "1", "--cells", "fedcond", "--no-upper-bound",
                "--scratch", str(tmp_path / "s"), "--out", str(tmp_path / "o")])
    before = FederateConfig(dataset="digits", data_dir="", num_clients=10, partition="dirichlet", alpha=0.5, seed=0,
                            method="dm", method_options="", iterations=100, server_epochs=300, storage_dtype="uint8",
                            storage_dtypes="uint8", proximal_mu=0.01, central_max_epochs=30, device="cpu",
                            ipc=1, random_reference=True, round_timeout=6 * 3600.0)
    assert ran["fedcond_ipc1"].to_json() == before.to_json()


def test_fedavg_traffic_counts_the_models_it_downloads_and_judges_the_3_point_goal():
    bench = _load()
    mib = 2**20
    fedavg = _run("fedavg", [0.50, 0.60, 0.70, 0.70], 10.0)
    for r in fedavg["rounds"]:  # the global model goes down to the same 10 clients every round
        r["download_bytes"] = r["upload_bytes"]
    iterative = _run("fedcond-iterative", [0.60, 0.68], 1.0)
    iterative["download_bytes"] = 6 * mib  # the model each round, smaller sets up
    for r in iterative["rounds"]:
        r["download_bytes"] = 3 * mib * r["round"]
    cells = {"fedavg": {"runs": [fedavg]}, "fedcond-iterative": {"runs": [iterative]}}
    summary = bench.summarise(cells, 0.005)
    p = summary["fedavg_plateau"]
    assert (p["round"], p["upload_bytes"], p["download_bytes"], p["traffic_bytes"]) == (3, 30 * mib, 30 * mib, 60 * mib)
    row = summary["fedcond"][0]
    assert row["traffic_bytes"] == 8 * mib
    assert round(row["upload_fraction_of_fedavg_to_plateau"], 6) == round(2 / 30, 6)
    assert round(row["traffic_fraction_of_fedavg_to_plateau"], 6) == round(8 / 60, 6)  # over a tenth both ways
    assert round(row["below_fedavg_plateau_pts"], 6) == 2.0
    assert row["within_3pt_at_tenth_traffic"] is False
    # round 1 fits the tenth (4 of 6 MiB) but is 10 points below; round 2 is 2 below but sends 8
    assert row["best_round_within_tenth_traffic"]["round"] == 1
    assert round(row["best_round_within_tenth_traffic"]["below_fedavg_plateau_pts"], 6) == 10.0
    iterative["download_bytes"] = iterative["rounds"][1]["download_bytes"] = 3 * mib
    assert bench.summarise(cells, 0.005)["fedcond"][0]["within_3pt_at_tenth_traffic"] is True  # 5 / 60
    # a run whose last round costs more than the tenth meets the goal in an earlier round that fits
    # (validation picks round 3: the row stands at its 18 MiB both ways)
    iterative["rounds"].append({**iterative["rounds"][1], "round": 3, "upload_bytes": 9 * mib, "accuracy": 0.69,
                                "download_bytes": 9 * mib, "val_accuracy": 0.70})
    iterative.update(download_bytes=9 * mib, upload_bytes=9 * mib, final_accuracy=0.69, selected_round=3,
                     selected_accuracy=0.69)
    row = bench.summarise(cells, 0.005)["fedcond"][0]
    assert row["traffic_fraction_of_fedavg_to_plateau"] > 0.1 and row["within_3pt_at_tenth_traffic"] is True
    assert row["best_round_within_tenth_traffic"]["round"] == 2


def test_a_cell_whose_clients_did_not_all_reply_is_moved_aside_not_recorded(tmp_path, monkeypatch):
    import pytest

    import fedcond.simulations.experiment as experiment
    from fedcond.federated.config import FederateConfig

    bench = _load()
    timed_out = {**_run("fedcond", [0.0939], 0.0, ipc=10), "clients_lost_total": 10}
    monkeypatch.setattr(experiment, "run_experiment", lambda cfg, strategies, folder, resources, reference: (
        folder.mkdir(parents=True, exist_ok=True),
        {"runs": [timed_out], "reference_runs": [], "raw_data_upload_bytes": 1})[1])
    folder = tmp_path / "fedcond_ipc10_f2"
    with pytest.raises(SystemExit, match="fedcond lost 10 client-rounds .*--round-timeout 60 s"):
        bench.run_cell(FederateConfig(dataset="digits", round_timeout=60.0), ["fedcond"], folder, None)
    assert not folder.exists()  # the next invocation starts the cell afresh
    assert [p.name.startswith("fedcond_ipc10_f2.lost-") for p in tmp_path.iterdir()] == [True]


def test_fedavg_goes_on_from_the_winning_grid_cells_last_round(tmp_path, monkeypatch):
    """FedAvg's cell starts from the checkpoint of the grid cell with its settings (its first rounds are
    that cell's); FedProx, a different run, starts from round 1."""
    bench = _load()
    seen = {}

    def fake_cell(cfg, strategies, folder, memory, resources=None):
        name = strategies[0]
        if folder.name.startswith("fedavg_lr"):  # a grid cell: leave its round-2 checkpoint as a run does
            ck = folder / "checkpoints" / name
            ck.mkdir(parents=True)
            (ck / "round-2.safetensors").write_bytes(b"model")
            (ck / "round-2.json").write_text("{}")
            (ck / "latest.json").write_text(json.dumps({"round": 2, "lr": cfg.lr}))
            (ck / "record.json").write_text("{}")
        seen[folder.name] = sorted(p.name for p in (folder / "checkpoints" / name).glob("*")) \
            if (folder / "checkpoints" / name).exists() else []
        acc = [0.5, 0.6 + cfg.lr] if folder.name.startswith("fedavg_lr") else [0.5, 0.6, 0.7, 0.8]
        return {"config": cfg.to_json(), "wall_seconds": 1.0, "runs": [_run(name, acc, 1.0)], "reference_runs": []}

    monkeypatch.setattr(bench, "run_cell", fake_cell)
    bench.main(["--dataset", "digits", "--alphas", "0.5", "--seeds", "0", "--ipcs", "1", "--rounds", "4",
                "--tune-rounds", "2", "--grid-lr", "0.01,0.05", "--grid-epochs", "1", "--cells", "grid,fedavg,fedprox",
                "--no-upper-bound", "--scratch", str(tmp_path / "scratch"), "--out", str(tmp_path / "out")])
    cell = tmp_path / "scratch" / "alpha0.5" / "seed0" / "fedavg"
    assert seen["fedavg"] == ["latest.json", "round-2.json", "round-2.safetensors"]  # not the 2-round record
    assert json.loads((cell / "checkpoints" / "fedavg" / "latest.json").read_text())["lr"] == 0.05  # the winner's
    assert json.loads((cell / "continued_from.json").read_text()) == {"cell": "fedavg_lr0.05_ep1"}
    assert seen["fedprox"] == []


def test_a_fresh_scratch_reads_the_finished_cells_from_the_results_file(tmp_path, monkeypatch):
    """The results file is committed, the scratch is not: on a fresh clone only the cell it lacks runs
    (FedProx here; the grid and FedAvg come from the report), and a cell asked with other settings runs."""
    from fedcond.simulations import experiment

    bench = _load()
    calls = []

    def fake_experiment(cfg, strategies, folder, resources, reference):
        calls.append(folder.name)
        folder.mkdir(parents=True, exist_ok=True)  # as a run does
        acc = [0.5 + cfg.lr + 0.01 * i for i in range(cfg.rounds)]
        return {"runs": [_run(strategies[0], acc, 1.0)], "reference_runs": [], "raw_data_upload_bytes": 1}

    monkeypatch.setattr(experiment, "run_experiment", fake_experiment)
    common = ["--dataset", "digits", "--alphas", "0.5", "--seeds", "0", "--ipcs", "", "--rounds", "2",
              "--tune-rounds", "2", "--grid-lr", "0.01,0.05", "--grid-epochs", "1", "--no-upper-bound",
              "--out", str(tmp_path / "out")]
    bench.main([*common, "--cells", "grid,fedavg", "--scratch", str(tmp_path / "first")])
    assert calls == ["fedavg_lr0.01_ep1", "fedavg_lr0.05_ep1"]  # FedAvg is the winning grid cell
    calls.clear()
    bench.main([*common, "--cells", "fedprox", "--scratch", str(tmp_path / "fresh")])
    assert calls == ["fedprox"]
    report = json.loads((tmp_path / "out" / "federated_digits.json").read_text())
    cells = report["settings"]["alpha=0.5"]["seed=0"]["cells"]
    assert set(cells) == {"fedavg_lr0.01_ep1", "fedavg_lr0.05_ep1", "fedavg", "fedprox"}
    assert cells["fedprox"]["config"]["lr"] == 0.05  # tuned on the grid read from the report
    assert (tmp_path / "fresh" / "alpha0.5" / "seed0" / "fedavg_lr0.05_ep1" / "cell.json").exists()
    calls.clear()
    bench.main([*common, "--cells", "grid", "--iterations", "7", "--scratch", str(tmp_path / "other")])
    assert calls == ["fedavg_lr0.01_ep1", "fedavg_lr0.05_ep1"]  # not the report's: other settings


def test_the_upper_bound_is_read_from_the_results_file_unless_its_inputs_changed(tmp_path, monkeypatch):
    """A fresh scratch asked for other cells keeps the finished upper bound (an hour on CIFAR-10) in the
    report; trained under other inputs (another epoch limit) it is trained again."""
    import pytest

    from fedcond.federated import references

    bench = _load()
    trained = []

    def fake_reference(data, cfg, total_ipc=None, on_event=None, checkpoint_dir=None):
        trained.append(cfg.central_max_epochs)
        return {"full_data_accuracy": 0.9, "full_data_epochs": cfg.central_max_epochs, "full_data_best_epoch": 3,
                "full_data_seconds": 60.0}

    monkeypatch.setattr(references, "centralised_reference", fake_reference)
    common = ["--dataset", "digits", "--alphas", "0.5", "--seeds", "0", "--ipcs", "", "--grid-lr", "0.01",
              "--grid-epochs", "1", "--out", str(tmp_path / "out")]
    bench.main([*common, "--cells", "upper-bound", "--scratch", str(tmp_path / "first")])
    assert trained == [30]
    bench.main([*common, "--cells", "", "--scratch", str(tmp_path / "fresh")])
    assert trained == [30]
    report = json.loads((tmp_path / "out" / "federated_digits.json").read_text())
    assert report["settings"]["alpha=0.5"]["seed=0"]["upper_bound"]["full_data_accuracy"] == 0.9
    assert report["wall_seconds"] == 60.0  # its training time counts in the report's wall time
    bench.main([*common, "--cells", "upper-bound", "--central-max-epochs", "7", "--scratch", str(tmp_path / "other")])
    assert trained == [30, 7]
    with pytest.raises(SystemExit, match="central_max_epochs: 7, now 9"):  # its scratch: never under other inputs
        bench.main([*common, "--cells", "upper-bound", "--central-max-epochs", "9", "--scratch",
                    str(tmp_path / "other")])
    assert trained == [30, 7]


def test_a_longer_upper_bound_keeps_the_finished_cells():
    """Cells run without the centralised reference: its epoch limit and patience do not change them."""
    from fedcond.federated.config import FederateConfig

    bench = _load()
    ran = FederateConfig(dataset="digits", central_max_epochs=30).to_json()
    assert bench.changed_settings(ran, FederateConfig(dataset="digits", central_max_epochs=200,
                                                      central_patience=9).to_json()) == []
    assert bench.changed_settings(ran, FederateConfig(dataset="digits", lr=0.01).to_json()) == ["lr"]
