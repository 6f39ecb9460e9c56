"""A comparison killed after round k and started again ends as an uninterrupted one.

A kill is an exception raised from the progress callback right after a round was
checkpointed. The comparison is killed twice: after round 2 of iterative FedCond (whose
clients must find their previous sets again, their node state gone), then, on the
rerun, after round 2 of FedAdam (FedCond having finished). The last rerun takes
FedCond's record from its checkpoint, continues FedAdam at round 3 with its global model
and server-optimiser moments, and writes the same results: wall times and node ids
aside (Flower draws node ids afresh for every federation), and byte counts up to a few
bytes (each message's header carries its node id as a varint, so even two uninterrupted
runs differ there by a byte or two per message).
"""

from __future__ import annotations

import json

import pytest

from fedcond.federated.config import FederateConfig
from fedcond.federated.events import RoundFinished, RunFinished, RunStarted

CFG = FederateConfig(dataset="digits", num_clients=3, partition="dirichlet", alpha=0.5, rounds=3, method="random",
                     ipc=2, iterations=5, server_epochs=5, local_epochs=1, lr=0.05, seed=2, storage_dtypes="float32",
                     herding_reference=False)
STRATEGIES = ["fedcond-iterative", "fedadam"]


class Killed(Exception):
    pass


def _run(out, on_event=None):
    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config

    return run_experiment(CFG, STRATEGIES, out, backend_config(1.0, 0.0, 2), reference="none", on_event=on_event)


def _comparable(path, approx_bytes=False):
    """results.json without wall times, node ids and what the machine measured (CPU time,
    memory); byte counts as ``pytest.approx`` if asked."""
    measured = ("wall_seconds", "seconds", "clients_seconds", "cpu_seconds", "distill_cpu_seconds", "peak_memory",
                "node_id", "record")

    def strip(value, key=""):
        if isinstance(value, dict):
            return {k: strip(v, k) for k, v in value.items() if k not in measured}
        if isinstance(value, list):
            return [strip(v, key) for v in value]
        if approx_bytes and key.endswith("bytes") and isinstance(value, int):
            return pytest.approx(value, abs=16, rel=1e-5)
        return value

    return strip(json.loads(path.read_text()))


def test_killed_run_resumes_to_the_same_results(tmp_path):
    _run(tmp_path / "whole")

    def kill_after_round_2_of(name):
        def kill(event):
            if isinstance(event, RoundFinished) and event.name == name and event.server_round == 2:
                raise Killed
        return kill

    with pytest.raises(Killed):
        _run(tmp_path / "killed", kill_after_round_2_of("fedcond-iterative"))
    events = []
    with pytest.raises(Killed):
        _run(tmp_path / "killed", lambda e: (events.append(e), kill_after_round_2_of("fedadam")(e)))
    assert RunStarted("fedcond-iterative", 3, 3, first_round=3) == events[0]
    assert json.loads((tmp_path / "killed/checkpoints/fedadam/latest.json").read_text())["round"] == 2
    assert not (tmp_path / "killed/results.json").exists()

    events = []
    _run(tmp_path / "killed", events.append)
    assert RunFinished("fedcond-iterative", events[0].record, from_checkpoint=True) == events[0]
    assert RunStarted("fedadam", 3, 3, first_round=3) in events
    assert [e.server_round for e in events if isinstance(e, RoundFinished)] == [3]  # only the missing round ran
    assert _comparable(tmp_path / "killed/results.json") == _comparable(
        tmp_path / "whole/results.json", approx_bytes=True
    )


def test_a_changed_setting_is_not_resumed(tmp_path):
    from dataclasses import replace

    from fedcond.errors import FedcondError
    from fedcond.federated.checkpoint import RoundState, load_latest, save_round
    from fedcond.federated.comms import CommLedger

    cfg = replace(CFG, strategy="fedavg")  # a run of 3 rounds (one-shot FedCond runs 1)
    save_round(tmp_path, cfg, RoundState(2, {}, {2: 0.5}, {2: 1.0}, CommLedger()))
    assert load_latest(tmp_path, cfg).accuracy == {2: 0.5}
    with pytest.raises(FedcondError, match="lr: 0.05 there, 0.1 now"):
        load_latest(tmp_path, replace(cfg, lr=0.1))
    assert load_latest(tmp_path, replace(cfg, client_threads=2)) is not None  # speed settings may change
    assert load_latest(tmp_path, replace(cfg, rounds=5)).server_round == 2  # a longer run continues it
    with pytest.raises(FedcondError, match="holds round 2, past this run's 1 rounds"):
        load_latest(tmp_path, replace(cfg, rounds=1))


def test_a_run_given_more_rounds_continues_the_shorter_one(tmp_path):
    from dataclasses import replace

    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config

    def run(out, rounds, on_event=None):
        cfg = replace(CFG, rounds=rounds)
        run_experiment(cfg, ["fedavg"], out, backend_config(1.0, 0.0, 2), reference="none", on_event=on_event)

    run(tmp_path / "whole", 3)
    run(tmp_path / "extended", 2)
    events = []
    run(tmp_path / "extended", 3, events.append)
    assert RunStarted("fedavg", 3, 3, first_round=3) in events
    assert [e.server_round for e in events if isinstance(e, RoundFinished)] == [3]  # rounds 1-2 not run again
    assert _comparable(tmp_path / "extended/results.json") == _comparable(
        tmp_path / "whole/results.json", approx_bytes=True
    )


def test_a_checkpoint_older_than_a_new_setting_resumes_while_the_setting_keeps_its_default(tmp_path):
    """A setting fedcond gained after a checkpoint was written changes nothing at its default."""
    import pytest

    from fedcond.errors import FedcondError
    from fedcond.federated.checkpoint import check_settings, result_settings

    now = result_settings(CFG)
    older = {k: v for k, v in now.items() if k != "val_fraction"}  # written before val_fraction existed
    check_settings(tmp_path, older, now)
    from dataclasses import replace

    with pytest.raises(FedcondError, match="val_fraction"):
        check_settings(tmp_path, older, result_settings(replace(CFG, val_fraction=0.2)))


def test_a_checkpoint_written_before_the_app_and_experiment_settings_split_resumes(tmp_path):
    """Checkpoints used to record every setting, the experiment's too (strategies, references):
    those are no app settings now and are left out of the comparison; an app setting still counts."""
    import pytest

    from fedcond.errors import FedcondError
    from fedcond.federated.checkpoint import check_settings, result_settings

    now = result_settings(CFG)
    assert "strategies" not in now and "central_max_epochs" not in now and "rounds" in now
    older = {**now, "strategies": "fedcond", "storage_dtypes": "float32,float16,uint8", "random_reference": True,
             "herding_reference": True, "dp_epsilons": "", "dp_non_private": False, "unequal_recipe": False,
             "central_max_epochs": 100, "central_patience": 5}
    check_settings(tmp_path, older, now)
    with pytest.raises(FedcondError, match="ipc"):
        check_settings(tmp_path, {**older, "ipc": now["ipc"] + 1}, now)
