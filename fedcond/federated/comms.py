"""Communication accounting: a Grid wrapper that measures every message sent and received.

``MeteredGrid`` wraps the Grid a ServerApp is given and forwards every call; on
``send_and_receive`` it records, per round and per node, the serialised size of each
instruction message (download: server -> client) and each reply (upload: client ->
server), measured with :func:`fedcond.federated.records.message_nbytes` on the very
Message objects that went through the grid. Any strategy — FedCond or Flower's own FedAvg,
FedProx, FedAdam — is metered the same way, without knowing about it.

Error replies (a client that raised) are recorded as ``failed`` with Flower's reason; the
sampled nodes that never replied within the timeout as ``dropped``. The strategy may mark
replies it rejected (``CommLedger.mark``).

Replies are handed to the strategy sorted by the client's partition id (from the reply's
MetricRecord), not in order of arrival: the strategies add them up in that order, and a
floating-point sum depends on its order, so a rerun — or a resumed run — gives the same
model. With ``on_reply`` the grid pushes and pulls itself (the loop of Flower's own
``send_and_receive``) to report each reply as it arrives, for a progress bar.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

from fedcond.federated.records import CONFIGRECORD_KEY, message_nbytes

# on_reply(server_round, replies so far, messages sent, reply ok?)
OnReply = Callable[[int, int, int, bool], None]


@dataclass
class ClientRound:
    """One sampled client in one round: bytes each way and what became of its reply."""

    node_id: int
    download_bytes: int = 0
    upload_bytes: int = 0
    status: str = "dropped"  # ok | failed | rejected | dropped
    reason: str = ""
    partition_id: int | None = None
    # CPU seconds of the client's distillation this round, as its reply states (distilling
    # strategies without DP; None otherwise): the compute beside the bytes
    distill_cpu_seconds: float | None = None


@dataclass
class CommLedger:
    """Per-round, per-client byte counts of one strategy's run."""

    rounds: dict[int, dict[int, ClientRound]] = field(default_factory=dict)
    # seconds from sending a round's train messages to its last reply (the clients' part)
    client_seconds: dict[int, float] = field(default_factory=dict)

    def client(self, server_round: int, node_id: int) -> ClientRound:
        return self.rounds.setdefault(server_round, {}).setdefault(node_id, ClientRound(node_id))

    def mark(self, server_round: int, node_id: int, status: str, reason: str = "") -> None:
        entry = self.client(server_round, node_id)
        entry.status, entry.reason = status, reason

    def round_totals(self, server_round: int) -> tuple[int, int]:
        """(upload, download) bytes of one round, summed over its clients."""
        clients = self.rounds.get(server_round, {}).values()
        return sum(c.upload_bytes for c in clients), sum(c.download_bytes for c in clients)

    def lost(self, server_round: int) -> list[ClientRound]:
        """Clients of the round whose reply did not count (failed, rejected or dropped)."""
        return [c for c in self.rounds.get(server_round, {}).values() if c.status != "ok"]

    def to_json(self, server_round: int) -> list[dict[str, Any]]:
        return [vars(c).copy() for c in self.rounds.get(server_round, {}).values()]


def _round_of(message: Any, fallback: int) -> int:
    try:
        return int(message.content[CONFIGRECORD_KEY]["server-round"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return fallback


# Messages a round keeps pushed and unanswered at once (see MeteredGrid._push_and_pull):
# enough to keep every simulated worker busy (a local simulation runs at most a few
# clients per core), few enough that the link state's per-node polling stays cheap.
MAX_IN_FLIGHT = max(8, 4 * (os.cpu_count() or 1))


@functools.lru_cache(maxsize=1)
def _build_metered_grid():
    from flwr.serverapp import Grid

    class MeteredGrid(Grid):
        """A Grid that forwards everything to ``inner`` and meters train messages."""

        def __init__(self, inner: Grid, ledger: CommLedger, meter_types: tuple[str, ...] = ("train",),
                     on_reply: OnReply | None = None) -> None:
            self.inner, self.ledger, self.meter_types, self.on_reply = inner, ledger, meter_types, on_reply
            self._calls = 0

        # -- plain forwarding ------------------------------------------------------
        def set_run(self, run):
            return self.inner.set_run(run)

        @property
        def run(self):
            return self.inner.run

        def create_message(self, *args, **kwargs):
            return self.inner.create_message(*args, **kwargs)

        def get_node_ids(self) -> Iterable[int]:
            return self.inner.get_node_ids()

        def push_messages(self, messages):
            return self.inner.push_messages(messages)

        def pull_messages(self, message_ids):
            return self.inner.pull_messages(message_ids)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        # -- metering --------------------------------------------------------------
        def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Iterable[Any]:
            messages = list(messages)
            metered = [m for m in messages if m.metadata.message_type in self.meter_types]
            if metered:
                self._calls += 1
            # Measure before sending: the grid may drop its references once pushed; the
            # deflated form excludes the message id the grid assigns, so nothing changes.
            sizes = [(m, _round_of(m, self._calls), message_nbytes(m)) for m in metered]
            sent_at = time.perf_counter()
            if self.on_reply is not None and metered:
                replies = self._push_and_pull(messages, timeout, sizes[0][1])
            else:
                replies = list(self.inner.send_and_receive(messages, timeout=timeout))
            if sizes:
                self.ledger.client_seconds[sizes[0][1]] = time.perf_counter() - sent_at
            for msg, rnd, size in sizes:
                self.ledger.client(rnd, msg.metadata.dst_node_id).download_bytes += size
            rounds_by_node = {m.metadata.dst_node_id: rnd for m, rnd, _ in sizes}
            for reply in replies:
                node = reply.metadata.src_node_id
                if node not in rounds_by_node:
                    continue
                entry = self.ledger.client(rounds_by_node[node], node)
                entry.upload_bytes += message_nbytes(reply)
                if reply.has_error():
                    entry.status, entry.reason = "failed", short_reason(str(reply.error.reason))
                else:
                    entry.status = "ok"
                    _note_partition(entry, reply)
            return sorted(replies, key=_partition_order)

        def _push_and_pull(self, messages: list[Any], timeout: float | None, server_round: int) -> list[Any]:
            """Flower's ``send_and_receive`` loop, calling ``on_reply`` for each reply, with at
            most ``MAX_IN_FLIGHT`` messages pushed and unanswered at a time: the simulation's
            in-memory link state scans every stored message on each poll, so pushing a
            1,000-client round at once made the server's process burn more CPU than the clients
            (profiled: flwr's InMemoryLinkState._check_stored_messages). The replies, sorted by
            partition afterwards, are the same."""
            waiting = list(reversed(messages))  # pop() sends them in their order
            pending: set[Any] = set()
            sent, replies = len(messages), []
            end = time.time() + (timeout or 0.0)
            while (pending or waiting) and (timeout is None or time.time() < end):
                if waiting and len(pending) < MAX_IN_FLIGHT:
                    batch = [waiting.pop() for _ in range(min(len(waiting), MAX_IN_FLIGHT - len(pending)))]
                    pending.update(self.inner.push_messages(batch))
                for reply in self.inner.pull_messages(pending):
                    replies.append(reply)
                    pending.discard(reply.metadata.reply_to_message_id)
                    self.on_reply(server_round, len(replies), sent, not reply.has_error())
                if pending:
                    time.sleep(getattr(self.inner, "pull_interval", 0.1))
            return replies

    return MeteredGrid


def _partition_order(reply: Any) -> tuple[int, int]:
    """Sort key: partition id (error replies, which carry none, last), then node id."""
    entry = ClientRound(reply.metadata.src_node_id)
    if not reply.has_error():
        _note_partition(entry, reply)
    pid = entry.partition_id
    return (pid if pid is not None else 1 << 62, reply.metadata.src_node_id)


def short_reason(reason: str) -> str:
    """The last meaningful line of an error reason (Ray wraps client tracebacks in pages)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in reason.splitlines()]
    lines = [ln for ln in lines if ln and not set(ln) <= set("^~ ")]
    return (lines[-1] if lines else reason)[:300]


def _note_partition(entry: ClientRound, reply: Any) -> None:
    """Record the client's partition id (and distillation CPU seconds) when its reply's
    MetricRecord carries them."""
    try:
        for record in reply.content.metric_records.values():
            if "partition-id" in record:
                entry.partition_id = int(record["partition-id"])
            if "distill-cpu-seconds" in record:
                entry.distill_cpu_seconds = float(record["distill-cpu-seconds"])
    except (AttributeError, TypeError, ValueError):
        pass


def metered_grid(inner: Any, ledger: CommLedger, meter_types: tuple[str, ...] = ("train",),
                 on_reply: OnReply | None = None) -> Any:
    """Wrap ``inner`` (a flwr Grid) so ``ledger`` receives every train message's size
    (and ``on_reply`` hears of every train reply as it arrives)."""
    return _build_metered_grid()(inner, ledger, meter_types, on_reply)
