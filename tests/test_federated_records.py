"""Bytes counted equal the serialised size of what Flower sends, in both directions."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents, push_objects

from fedcond.federated.comms import CommLedger, metered_grid
from fedcond.federated.records import message_nbytes, model_to_record, set_from_records, set_to_records
from fedcond.models import get_model


def _pushed_bytes(message) -> tuple[int, dict[str, bytes]]:
    """What Flower's own push routine (SuperNode/Grid -> SuperLink) hands to the transport."""
    sent: dict[str, bytes] = {}
    push_objects(
        get_all_nested_objects(message), lambda oid, content: sent.__setitem__(oid, content), keep_objects=True
    )
    return sum(len(c) for c in sent.values()), sent


def test_synthetic_set_round_trips_through_records(tiny_set):
    arrays, meta = set_to_records(tiny_set)
    back = set_from_records(arrays, meta)
    assert torch.equal(back.images, tiny_set.images) and torch.equal(back.labels, tiny_set.labels)


def test_counted_bytes_equal_what_flower_pushes(task_identity, tiny_set):
    arrays, meta = set_to_records(tiny_set)
    msg = Message(
        RecordDict({"synthetic": arrays, "synthetic-meta": meta, "metrics": MetricRecord({"num-examples": 5})}),
        dst_node_id=3,
        message_type=MessageType.TRAIN,
    )
    counted = message_nbytes(msg)
    pushed, contents = _pushed_bytes(msg)
    assert counted == pushed
    # Those bytes are the whole message: it can be rebuilt from them alone.
    rebuilt = inflate_object_from_contents(msg.object_id, contents)
    assert np.array_equal(rebuilt.content["synthetic"]["images"].numpy(), tiny_set.images.numpy())
    # And the payload dominates: at least the raw image bytes, plus small headers.
    assert tiny_set.images.numel() * 4 < counted < tiny_set.images.numel() * 4 + 8000


def test_metered_grid_counts_download_and_upload_per_client(task_identity):
    model = get_model("convnet", 1, 10, (8, 8), seed=0)
    record = model_to_record(model)
    raw = sum(p.numel() * 4 for p in model.state_dict().values())

    class FakeGrid:  # answers every train message with the model (like a FedAvg client)
        def send_and_receive(self, messages, *, timeout=None):
            return [
                Message(
                    RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 1, "partition-id": 4})}),
                    reply_to=m,
                )
                for m in messages
            ]

    ledger = CommLedger()
    grid = metered_grid(FakeGrid(), ledger)
    out = [Message(RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 2})}), dst_node_id=n,
                   message_type=MessageType.TRAIN) for n in (11, 12)]
    replies = list(grid.send_and_receive(out))
    for msg, reply in zip(out, replies):
        entry = ledger.rounds[2][msg.metadata.dst_node_id]
        assert entry.download_bytes == _pushed_bytes(msg)[0]
        assert entry.upload_bytes == _pushed_bytes(reply)[0]
        assert entry.status == "ok" and entry.partition_id == 4
        assert raw < entry.download_bytes < raw + 20_000
    up, down = ledger.round_totals(2)
    assert up == sum(_pushed_bytes(r)[0] for r in replies) and down == sum(_pushed_bytes(m)[0] for m in out)


def test_metered_grid_reports_each_reply_and_orders_them_by_partition(task_identity):
    """With ``on_reply`` the grid pushes and pulls itself, one callback per reply as it
    arrives; the strategy gets the replies by partition id, whatever the arrival order."""
    record = model_to_record(get_model("convnet", 1, 10, (8, 8), seed=0))
    out = [Message(RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 1})}), dst_node_id=n,
                   message_type=MessageType.TRAIN) for n in (21, 22, 23)]

    class PushPullGrid:  # replies arrive one per pull, the last partition first
        pull_interval = 0.0

        def push_messages(self, messages):
            for i, m in enumerate(messages):
                m.metadata.__dict__["_message_id"] = f"m{i}"  # as a grid assigns ids when pushing
            self.queue = [
                Message(
                    RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 1, "partition-id": p})}),
                    reply_to=m,
                )
                for m, p in zip(reversed(messages), (2, 1, 0))
            ]
            return [m.metadata.message_id for m in messages]

        def pull_messages(self, ids):
            return [self.queue.pop(0)] if self.queue else []

    heard = []
    grid = metered_grid(PushPullGrid(), CommLedger(), on_reply=lambda *args: heard.append(args))
    replies = list(grid.send_and_receive(out, timeout=5))
    assert heard == [(1, 1, 3, True), (1, 2, 3, True), (1, 3, 3, True)]
    assert [int(r.content["metrics"]["partition-id"]) for r in replies] == [0, 1, 2]


def test_metered_grid_keeps_at_most_max_in_flight_messages_pushed(task_identity, monkeypatch):
    """A big round is pushed in waves (Flower's in-memory link state scans every stored
    message per poll); every client still gets its message once and every reply is heard."""
    from fedcond.federated import comms

    monkeypatch.setattr(comms, "MAX_IN_FLIGHT", 4)
    record = model_to_record(get_model("convnet", 1, 10, (8, 8), seed=0))
    out = [Message(RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 1})}), dst_node_id=n,
                   message_type=MessageType.TRAIN) for n in range(100, 111)]

    class WindowGrid:  # answers two pushed messages per pull
        pull_interval = 0.0

        def __init__(self):
            self.in_flight, self.most, self.pushed, self.count = [], 0, [], 0

        def push_messages(self, messages):
            ids = []
            for m in messages:
                m.metadata.__dict__["_message_id"] = f"m{self.count}"
                self.count += 1
                self.in_flight.append(m)
                self.pushed.append(m.metadata.dst_node_id)
                ids.append(m.metadata.message_id)
            self.most = max(self.most, len(self.in_flight))
            return ids

        def pull_messages(self, ids):
            done, self.in_flight = self.in_flight[:2], self.in_flight[2:]
            return [Message(RecordDict({"metrics": MetricRecord({"partition-id": m.metadata.dst_node_id - 100})}),
                            reply_to=m) for m in done]

    inner, heard = WindowGrid(), []
    grid = metered_grid(inner, CommLedger(), on_reply=lambda *args: heard.append(args))
    replies = list(grid.send_and_receive(out, timeout=5))
    assert inner.most == 4 and inner.pushed == list(range(100, 111))
    assert [h[1:] for h in heard] == [(i, 11, True) for i in range(1, 12)]
    assert [int(r.content["metrics"]["partition-id"]) for r in replies] == list(range(11))
