"""FedDM and FedAF as named strategies: two rounds in-process, warm starts, every byte counted, refusals.

The federation here is the ServerApp's own loop (``run_server``) on a Grid that answers each
message with the ClientApp in this process (one Flower Context per node, kept across rounds as
a SuperNode keeps its state), so a round costs seconds and every message still goes through
the metered grid.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from fedcond.errors import FedcondError
from fedcond.federated.comms import CommLedger
from fedcond.federated.config import FederateConfig
from fedcond.federated.records import KNOWLEDGE_KEY, SOFT_LABELS_KEY, message_nbytes, set_to_records

QUICK = {"dataset": "digits", "num_clients": 3, "rounds": 2, "ipc": 2, "iterations": 3, "server_epochs": 2,
         "local_epochs": 1}


class InProcessGrid:
    """Answers every message with the ClientApp in this process; remembers what went each way."""

    def __init__(self, cfg: FederateConfig) -> None:
        from fedcond.simulations.client_app import make_client_app

        self.app = make_client_app()
        self.contexts = {100 + i: Context(run_id=1, node_id=100 + i,
                                          node_config={"partition-id": i, "num-partitions": cfg.num_clients},
                                          state=RecordDict(), run_config=cfg.to_run_config())
                         for i in range(cfg.num_clients)}
        self.sent: list[Message] = []
        self.replies: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]
        self.sent += messages
        self.replies += replies
        return replies


def _run(strategy: str, **settings):
    from fedcond.simulations.server_app import run_server

    cfg = FederateConfig(**{**QUICK, **settings}, strategy=strategy, strategies=strategy)
    grid = InProcessGrid(cfg)
    return run_server(grid, cfg, expected_nodes=cfg.num_clients), grid


@pytest.fixture(scope="module")
def runs():
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    torch.set_num_threads(1)
    try:
        yield {name: _run(name) for name in ("feddm", "fedaf")}
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.mark.parametrize("name", ["feddm", "fedaf"])
def test_each_strategy_runs_two_rounds_with_its_clients_distillation_cost(runs, name):
    record, grid = runs[name]
    assert record["strategy"] == name and len(record["rounds"]) == 2
    assert record["selected_round"] in (1, 2)
    for rnd in record["rounds"]:
        assert rnd["accuracy"] is not None and rnd["clients_lost"] == 0
        assert all(c["distill_cpu_seconds"] is not None and c["distill_cpu_seconds"] > 0 for c in rnd["clients"])
    # every round sends the global model: FedDM and FedAF clients refine against it
    assert all(len(m.content["arrays"]) > 0 for m in grid.sent)
    assert {p["method"] for p in record["pool_provenance"]} == {name}
    assert {p["round"] for p in record["pool_provenance"]} == {2}  # the union of the current sets


def test_warm_start_refines_the_previous_rounds_set(monkeypatch, task_identity):
    import fedcond.federated.client_training as client_training

    seen = []
    real = client_training.distill_partition

    def spy(data, cfg, seed, global_model=None, previous=None, knowledge=None, callbacks=None):
        sset = real(data, cfg, seed, global_model=global_model, previous=previous, knowledge=knowledge,
                    callbacks=callbacks)
        seen.append((previous, sset))
        return sset

    monkeypatch.setattr(client_training, "distill_partition", spy)
    torch.set_num_threads(1)
    _run("feddm", num_clients=1, partition="iid")
    (first_previous, first), (second_previous, _) = seen
    assert first_previous is None  # round 1: from real images
    assert torch.equal(second_previous.images, first.images)  # round 2: the client's own set of round 1
    assert torch.equal(second_previous.labels, first.labels)


def test_fedaf_soft_labels_and_global_knowledge_travel_in_counted_messages(runs):
    record, grid = runs["fedaf"]
    by_round = {r["round"]: {c["node_id"]: c for c in r["clients"]} for r in record["rounds"]}
    for i, (msg, reply) in enumerate(zip(grid.sent, grid.replies)):
        rnd = 1 + i // QUICK["num_clients"]  # (Flower reuses one config record: the last round's number is in all)
        entry = by_round[rnd][msg.metadata.dst_node_id]
        # the ledger counts exactly the messages, soft labels and knowledge included
        assert entry["download_bytes"] == message_nbytes(msg) and entry["upload_bytes"] == message_nbytes(reply)
        soft = reply.content[SOFT_LABELS_KEY]
        assert soft["logits"].numpy().shape == (10, 10) and soft["counts"].numpy().sum() > 0
        without = RecordDict({k: v for k, v in reply.content.items() if k != SOFT_LABELS_KEY})
        assert message_nbytes(reply) - message_nbytes(without) >= 10 * 10 * 4 + 10 * 8
        if rnd == 1:  # no global knowledge yet
            assert KNOWLEDGE_KEY not in msg.content.array_records
        else:  # the clients' round-1 soft labels, aggregated, go down beside the model
            assert msg.content[KNOWLEDGE_KEY]["logits"].numpy().shape == (10, 10)
            without = RecordDict({k: v for k, v in msg.content.items() if k != KNOWLEDGE_KEY})
            assert message_nbytes(msg) - message_nbytes(without) >= 10 * 10 * 4


def test_fedaf_server_rejects_replies_without_valid_soft_labels(task_identity, digits, tiny_set):
    from fedcond.strategies import build_strategy

    cfg = FederateConfig(strategy="fedaf", strategies="fedaf", ipc=2, server_epochs=1)
    strategy = build_strategy(cfg, digits, CommLedger())

    def reply(node, soft):
        ins = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node,
                      message_type=MessageType.TRAIN)
        content = RecordDict({"synthetic": set_to_records(tiny_set)[0], "synthetic-meta": set_to_records(tiny_set)[1],
                              "metrics": MetricRecord({"num-examples": 10, "partition-id": node})})
        if soft is not None:
            content[SOFT_LABELS_KEY] = ArrayRecord(soft)
        return Message(content, reply_to=ins)

    good = {"logits": torch.randn(10, 10), "counts": torch.full((10,), 3, dtype=torch.long)}
    nan = {**good, "logits": torch.full((10, 10), float("nan"))}
    small = {**good, "logits": torch.randn(3, 10)}
    arrays, metrics = strategy.aggregate_train(1, [reply(0, good), reply(1, None), reply(2, nan), reply(3, small)])
    assert arrays is not None and list(strategy.pool) == ["p0"]
    reasons = {r["node_id"]: r["reason"] for r in strategy.rejections}
    assert "lacks FedAF's soft labels" in reasons[1] and "finite" in reasons[2] and "(10, 10)" in reasons[3]
    assert torch.allclose(strategy.knowledge[0], good["logits"]) and strategy.knowledge[1].tolist() == list(range(10))
    # the knowledge survives a checkpoint: it is rebuilt from the pool's soft labels
    tensors, state = strategy.state()
    restored = build_strategy(cfg, digits, CommLedger())
    restored.load_state(tensors, state)
    assert torch.equal(restored.knowledge[0], strategy.knowledge[0])


def test_fedaf_distillation_term_is_zero_at_agreement_and_symmetric():
    from fedcond.federated.fedaf import aggregate_knowledge, distillation_loss

    targets = torch.randn(4, 4)
    labels = torch.tensor([0, 0, 2])
    known = torch.tensor([True, True, True, False])
    agree = torch.stack([targets[0], targets[0], targets[2]])  # every image's logits = its class's target
    assert float(distillation_loss(agree, labels, targets, known, 2.0)) < 1e-6
    assert float(distillation_loss(torch.randn(3, 4), labels, targets, known, 2.0)) > 0
    assert float(distillation_loss(torch.randn(1, 4), torch.tensor([3]), targets, known, 2.0)) == 0.0  # unknown class
    # aggregation weighs each client's class mean by its count
    mean, classes = aggregate_knowledge([(torch.ones(4, 4), torch.tensor([1, 0, 0, 0])),
                                         (torch.zeros(4, 4), torch.tensor([3, 2, 0, 0]))])
    assert torch.allclose(mean[0], torch.full((4,), 0.25)) and classes.tolist() == [0, 1]


def test_feddm_draws_its_networks_on_the_sphere_of_radius_rho():
    from fedcond.distill.dm import perturbed
    from fedcond.models import get_model

    model = get_model("convnet", 1, 10, (8, 8), seed=0)
    copy = perturbed(model, 5.0, torch.Generator().manual_seed(0), kind="ball")
    with torch.no_grad():
        distance = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), copy.parameters())))
    assert abs(float(distance) - 5.0) < 1e-3


def test_paper_defaults_and_the_iterative_path_they_replace():
    from fedcond.federated.method_settings import FedAFSettings, FedDMSettings

    feddm = FederateConfig(strategy="feddm", strategies="feddm").feddm_config()
    assert (feddm.rho, feddm.perturb, feddm.iterations) == (FedDMSettings.rho, "ball", FedDMSettings.iterations)
    fedaf = FederateConfig(strategy="fedaf", strategies="fedaf", iterations=7)
    assert fedaf.feddm_config().iterations == 7 and fedaf.fedaf_lambda_local == FedAFSettings.lambda_local
    assert fedaf.effective_mode == "iterative" and fedaf.effective_rounds == fedaf.rounds and fedaf.distills
    old = FederateConfig(strategy="fedcond-iterative", strategies="fedcond-iterative").feddm_config()
    assert (old.rho, old.perturb) == (0.01, "relative")  # fedcond-iterative keeps its own settings


@pytest.mark.parametrize("settings, message", [
    ({"strategies": "fedcond,fedxx"}, "unknown strategy fedxx"),
    ({"strategies": "feddm", "method": "dc"}, "feddm condenses with DM"),
    ({"strategies": "fedcond,fedaf", "dp_epsilon": 1.0}, "every round of fedcond-iterative, feddm or fedaf"),
    ({"strategies": "fedaf", "fedaf_temperature": 0.0}, "fedaf-temperature must be > 0"),
    ({"strategies": "feddm", "feddm_radius": -1.0}, "feddm-radius"),
])
def test_refused_combinations_say_what_is_wrong(settings, message):
    with pytest.raises(FedcondError, match=message):
        FederateConfig(**settings)


def test_the_flower_app_builds_each_named_strategy(digits):
    from fedcond.strategies import build_strategy
    from fedcond.strategies.fedaf import FedAF
    from fedcond.strategies.feddm import FedDM

    for name, cls in (("feddm", FedDM), ("fedaf", FedAF)):
        cfg = FederateConfig(strategy=name, strategies=name)
        assert type(build_strategy(cfg, digits, CommLedger())) is cls
        assert dataclasses.replace(cfg).to_run_config()["strategy"] == name
