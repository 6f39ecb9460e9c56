"""FedCond with differentially private clients: --dp-epsilon selects dp-dm on publicly
normalised data, a client's reply says nothing exact about its data size or time, noise
seeds are refused, the server records every client's epsilon, and the report shows
accuracy against epsilon."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from typer.testing import CliRunner

from fedcond.cli import app
from fedcond.errors import FedcondError
from fedcond.federated.client_training import distill_partition
from fedcond.federated.comms import CommLedger
from fedcond.federated.config import FederateConfig
from fedcond.federated.records import set_to_records
from fedcond.federated.references import DP_EPSILON, RANDOM_REAL, plan_runs
from fedcond.federated.report import annotate_privacy, plot_accuracy_vs_epsilon, privacy_table
from fedcond.strategies import build_strategy

QUICK = '{"bank_size": 2}'


def test_dp_epsilon_makes_clients_distill_with_dp_dm(digits_public):
    cfg = FederateConfig(dp_epsilon=2.0, dp_delta=1e-6, ipc=2, iterations=3, method_options=QUICK)
    distiller, config = cfg.distill_config()
    assert distiller.name == "dp-dm" and config.epsilon == 2.0 and config.delta == 1e-6 and config.ipc == 2
    assert cfg.normalize == "public" and FederateConfig().normalize == ""  # DP: public constants, every run alike
    sset = distill_partition(digits_public.subset(torch.arange(400)), cfg, seed=1)
    assert sset.method == "dp-dm" and 1.9 < sset.config["privacy"]["epsilon"] <= 2.0
    assert FederateConfig().client_method == "dm"  # no DP unless asked


@pytest.mark.parametrize("options, problem", [
    ({"mode": "iterative"}, "one-shot"),
    ({"strategies": "fedcond-iterative"}, "one-shot"),
    ({"method": "dc"}, "--method dm or dp-dm"),
    ({"dp_delta": 0.0}, "--dp-delta"),
    ({"dp_epsilons": "1,x"}, "comma list"),
    ({"method_options": '{"epsilon": 3}'}, "unknown option"),
    ({"method_options": '{"noise_seed": 0}'}, "noise_seed is refused"),
    ({"normalize": "train"}, "private images"),
])
def test_impossible_dp_settings_are_user_errors(options, problem):
    with pytest.raises(FedcondError, match=problem):
        FederateConfig(**{"dp_epsilon": 1.0, **options})


@pytest.mark.parametrize("flags, problem", [(["--mode", "iterative"], "one-shot"),
                                            (["--normalize", "train"], "private images")])
def test_cli_dp_flag_error_is_one_line(tmp_path, flags, problem):
    result = CliRunner().invoke(app, ["federate", "--out", str(tmp_path), "--dp-epsilon", "1", *flags])
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: ") and problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_each_other_epsilon_is_a_reference_run_and_random_real_stays_non_private():
    cfg = FederateConfig(dp_epsilon=10.0, dp_epsilons="1,10", storage_dtypes="float32")
    runs = plan_runs(cfg, ["fedcond"])
    assert [r.name for r in runs][:3] == ["fedcond", "fedcond-eps1", RANDOM_REAL]  # then herding's control
    assert runs[1].kind == DP_EPSILON and runs[1].cfg.dp_epsilon == 1.0 and runs[1].cfg.client_method == "dp-dm"
    assert runs[2].cfg.dp_epsilon == 0.0 and runs[2].cfg.client_method == "random"


def _reply(node: int, sset, pid: int) -> Message:
    ins = Message(
        RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node, message_type=MessageType.TRAIN
    )
    arrays, meta = set_to_records(sset)
    content = RecordDict({"synthetic": arrays, "synthetic-meta": meta,
                          "metrics": MetricRecord({"num-examples": 10, "partition-id": pid})})
    return Message(content, reply_to=ins)


def test_server_records_every_clients_epsilon(task_identity, digits, digits_public, tiny_set):
    cfg = FederateConfig(ipc=2, server_epochs=1, dp_epsilon=3.0, iterations=2, method_options=QUICK)
    private = distill_partition(digits_public.subset(torch.arange(300)), cfg, seed=0)
    strategy = build_strategy(cfg, digits, CommLedger())
    strategy.aggregate_train(1, [_reply(5, private, 0), _reply(6, tiny_set, 1)])
    by_pid = {p["partition_id"]: p for p in strategy.provenance()}
    assert by_pid[0]["epsilon"] == private.config["privacy"]["epsilon"] and by_pid[0]["delta"] == 1e-5
    assert by_pid[1]["epsilon"] is None  # a client that did not use DP says so by saying nothing
    run = annotate_privacy({"pool_provenance": strategy.provenance()})
    assert run["client_epsilons"] == [by_pid[0]["epsilon"], None]
    assert run["epsilon"] is None  # one non-private client: the run as a whole has no guarantee


def test_report_shows_accuracy_against_epsilon(tmp_path):
    def run(name, eps, acc):
        pool = [{"epsilon": e, "delta": 1e-5 if e else None} for e in (eps, eps)]
        return annotate_privacy({"strategy": "fedcond", "name": name, "final_accuracy": acc, "upload_bytes": 2**20,
                                 "storage_dtype": "float32", "pool_provenance": pool})

    runs = [run("fedcond", 10.0, 0.9), run("fedcond-eps1", 1.0, 0.7), run(RANDOM_REAL, None, 0.95)]
    assert runs[0]["epsilon"] == 10.0 and runs[2]["epsilon"] is None
    table = privacy_table(runs)
    rows = [line for line in table.splitlines() if line.startswith("| fedcond") or line.startswith(f"| {RANDOM_REAL}")]
    assert [r.split("|")[2].strip() for r in rows] == ["1", "10", "inf"]
    path = plot_accuracy_vs_epsilon(runs, tmp_path / "eps.png", {"full_data_accuracy": 0.98})
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_accuracy_vs_epsilon(runs[2:], tmp_path / "none.png") is None and privacy_table(runs[2:]) == ""


def test_a_private_federation_end_to_end(tmp_path):
    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config

    cfg = FederateConfig(dataset="digits", num_clients=2, partition="iid", ipc=2, iterations=3, server_epochs=5,
                         dp_epsilon=10.0, dp_epsilons="1", storage_dtypes="float32", method_options=QUICK)
    result = run_experiment(cfg, ["fedcond"], tmp_path, backend_config(1.0, 0.0, 2), reference="none")
    main = result["runs"][0]
    assert len(main["client_epsilons"]) == 2 and 9.9 < main["epsilon"] <= 10.0
    refs = {r["name"]: r for r in result["reference_runs"]}
    assert 0.99 < refs["fedcond-eps1"]["epsilon"] <= 1.0
    assert RANDOM_REAL not in refs  # its clients upload real images: only with --dp-non-private (issue 40)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"][0]["epsilon"] == main["epsilon"]
    assert (tmp_path / "accuracy_vs_epsilon.png").exists() and "privacy budget" in (tmp_path / "results.md").read_text()


def _client_reply(cfg: FederateConfig, pid: int = 0) -> dict:
    """The metrics of one FedCond client's reply, as its ClientApp builds it."""
    from flwr.app import Context

    from fedcond.simulations.client_app import _fedcond_reply

    context = Context(run_id=1, node_id=1, node_config={"partition-id": pid}, state=RecordDict(),
                      run_config=cfg.to_run_config())
    msg = Message(RecordDict({"config": ConfigRecord({"server-round": 1, "mode": "oneshot"})}), dst_node_id=1,
                  message_type=MessageType.TRAIN)
    content = _fedcond_reply(msg, context, cfg, pid, 1)
    return dict(content["metrics"])


def test_a_dp_clients_reply_has_no_exact_count_or_time(task_identity):
    from fedcond.federated.partition import run_partitions

    base = {"num_clients": 2, "partition": "iid", "ipc": 1, "iterations": 2}
    exact = len(list(run_partitions(FederateConfig(**base)))[0])  # the client's partition (validation held out)
    plain = _client_reply(FederateConfig(**base))
    assert plain["num-examples"] == exact and "distill-seconds" in plain  # no DP: the exact numbers
    replies = [_client_reply(FederateConfig(dp_epsilon=10.0, method_options=QUICK, **base)) for _ in range(2)]
    for reply in replies:
        assert "distill-seconds" not in reply and not any("seconds" in key for key in reply)
        assert isinstance(reply["num-examples"], float) and reply["num-examples"] != exact
        assert abs(reply["num-examples"] - exact) < 200  # the noisy total of the release, near the truth
    assert replies[0]["num-examples"] != replies[1]["num-examples"]  # fresh noise every time
