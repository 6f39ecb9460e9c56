"""FedCond: clients upload distilled SyntheticSets; the server pools them and trains.

Built on Flower's message-based ``FedAvg`` (``flwr.serverapp.strategy``): node sampling
and ``start()`` (round loop, central evaluation) are Flower's; this class changes what
travels and what the server does with the replies.

- ``configure_train``: FedProx's pattern — the settings go into the config record (round,
  mode), then ``FedAvg.configure_train`` samples the clients and builds the messages
  under the strategy's record keys. Iterative mode sends the global model (FedDM-style
  refinement); one-shot mode sends an empty ArrayRecord — a client needs nothing but
  its data.
- ``aggregate_train``: every reply is validated (payload size cap, array keys, dtype,
  shape, class names, label range, NaN/Inf, image count). A bad reply is dropped with its
  reason logged and recorded; the round goes on with the rest. Accepted sets are pooled
  per client (a client's newer set replaces its older one, provenance kept), and the global
  model is trained on the pool with the evaluation protocol.

The pool is keyed by the client's partition id when its reply carries one: node ids are
drawn afresh whenever a federation starts, so a resumed run must recognise its clients
by partition. :meth:`FedCond.state` / :meth:`FedCond.load_state` give the pool and the
rejections to the per-round checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedcond.data import ImageDataset
from fedcond.federated.checkpoint import tensor_of_bytes
from fedcond.federated.comms import CommLedger
from fedcond.federated.records import SET_ARRAYS_KEY, SET_META_KEY, message_nbytes, set_from_records
from fedcond.synthetic import InvalidSyntheticSet, SyntheticSet

# Trains the global model on the pooled sets: (sets, server round, the model to continue from or
# None for a fresh one, a loss term added to every mini-batch or None) -> the trained model's arrays.
# The server app makes it from the run's settings (fedcond.federated.server_training.pool_trainer).
PoolTrainer = Callable[[list[SyntheticSet], int, ArrayRecord | None, Any], ArrayRecord]


@dataclass
class PoolEntry:
    """One client's current contribution to the server's pool."""

    sset: SyntheticSet
    node_id: int
    partition_id: int | None
    server_round: int
    nbytes: int
    extra: dict[str, torch.Tensor] | None = None  # what a method uploads beside the set (FedAF's soft labels)

    def provenance(self) -> dict[str, Any]:
        # epsilon / delta: the DP guarantee the client's set records (None: no DP). The server
        # records what the client states; it cannot check a guarantee from the set itself.
        privacy = self.sset.config.get("privacy") or {}
        return {"node_id": self.node_id, "partition_id": self.partition_id, "round": self.server_round,
                "num_images": self.sset.num_images, "class_counts": self.sset.class_counts(),
                "method": self.sset.method, "payload_bytes": self.nbytes,
                "epsilon": privacy.get("epsilon"), "delta": privacy.get("delta")}


class FedCond(FedAvg):
    """Pool clients' synthetic sets; train the global model on them (one-shot or iterative).

    Args:
        data: the task: a reply's images must have its image shape and classes.
        train_pool: trains the global model on the pool (:data:`PoolTrainer`).
        ipc: the most images per class a client's set may hold.
        max_payload_bytes: the cap on the bytes of one reply.
        iterative: send the global model every round and continue training it (FedDM-style
            refinement); one-shot otherwise.
        ledger: where rejected replies are marked (the metered grid's).
        method, iterations: what the clients run, for :meth:`summary` only.
        fraction_train, min_train_nodes, min_available_nodes, arrayrecord_key,
            configrecord_key: Flower's ``FedAvg``'s.
    """

    def __init__(self, data: ImageDataset, train_pool: PoolTrainer, *, ipc: int, max_payload_bytes: int,
                 iterative: bool = False, ledger: CommLedger | None = None, method: str = "",
                 iterations: int | None = None, fraction_train: float = 1.0, min_train_nodes: int = 1,
                 min_available_nodes: int = 1, arrayrecord_key: str = "arrays",
                 configrecord_key: str = "config") -> None:
        super().__init__(fraction_train=fraction_train, fraction_evaluate=0.0, min_train_nodes=min_train_nodes,
                         min_available_nodes=min_available_nodes, arrayrecord_key=arrayrecord_key,
                         configrecord_key=configrecord_key)
        self.data, self.train_pool = data, train_pool
        self.ipc, self.max_payload_bytes, self.iterative = ipc, max_payload_bytes, iterative
        self.method, self.iterations = method, iterations
        self.ledger = ledger if ledger is not None else CommLedger()
        self.pool: dict[str, PoolEntry] = {}  # by partition id (p3), else node id (n123)
        self.rejections: list[dict[str, Any]] = []
        self.global_arrays: ArrayRecord | None = None  # the model sent this round (iterative)

    def summary(self) -> None:
        log(INFO, "\t├──> FedCond: mode %s, method %s, ipc %d, iterations %s, payload cap %d bytes",
            "iterative" if self.iterative else "one-shot", self.method, self.ipc, self.iterations,
            self.max_payload_bytes)
        super().summary()

    # ------------------------------------------------------------------ sending
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample clients; send them the round's settings (and the model if iterative)."""
        config["mode"] = "iterative" if self.iterative else "oneshot"
        self.global_arrays = arrays
        return super().configure_train(server_round, arrays if self.iterative else ArrayRecord(), config, grid)

    # ------------------------------------------------------------------ receiving
    def check_reply(self, message: Message) -> tuple[SyntheticSet, int]:
        """The validated SyntheticSet of a reply and its size; ``InvalidSyntheticSet`` if bad."""
        size = message_nbytes(message)
        if size > self.max_payload_bytes:
            raise InvalidSyntheticSet(f"reply is {size} bytes, above the cap of {self.max_payload_bytes}")
        content = message.content
        if SET_ARRAYS_KEY not in content.array_records or SET_META_KEY not in content.config_records:
            raise InvalidSyntheticSet(
                f"reply lacks the '{SET_ARRAYS_KEY}' ArrayRecord or '{SET_META_KEY}' ConfigRecord"
            )
        sset = set_from_records(content[SET_ARRAYS_KEY], content[SET_META_KEY])
        d = self.data
        if tuple(sset.image_shape) != tuple(d.image_shape):
            raise InvalidSyntheticSet(f"images are {tuple(sset.image_shape)}, the task's are {tuple(d.image_shape)}")
        if tuple(sset.classes) != tuple(d.classes):
            raise InvalidSyntheticSet(f"classes {list(sset.classes)[:5]}... do not match the task's")
        cap = self.ipc * d.num_classes
        if not 0 < sset.num_images <= cap:
            raise InvalidSyntheticSet(f"{sset.num_images} images; expected 1 to {cap} (ipc {self.ipc})")
        return sset, size

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and pool the replies, then train the global model on the pool."""
        accepted = rejected = failed = 0
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                failed += 1
                log(
                    WARNING,
                    "round %d: client %d failed, its set is lost this round: %s",
                    server_round,
                    node,
                    msg.error.reason,
                )
                continue
            try:
                sset, size = self.check_reply(msg)
                extra = self.check_extra(msg, sset)
            except InvalidSyntheticSet as err:
                rejected += 1
                log(WARNING, "round %d: rejected the reply of client %d: %s", server_round, node, err)
                self.ledger.mark(server_round, node, "rejected", str(err))
                self.rejections.append({"round": server_round, "node_id": node, "reason": str(err)})
                continue
            accepted += 1
            # Keyed by the partition id the client reports (node ids change on a restart).
            pid = next(
                (int(m["partition-id"]) for m in msg.content.metric_records.values() if "partition-id" in m), None
            )
            self.pool[f"p{pid}" if pid is not None else f"n{node}"] = PoolEntry(sset, node, pid, server_round, size,
                                                                             extra)
        log(INFO, "round %d: %d sets accepted, %d rejected, %d clients failed; pool holds %d sets",
            server_round, accepted, rejected, failed, len(self.pool))
        epsilons = [e["epsilon"] for e in self.provenance() if e["epsilon"] is not None]
        if epsilons:
            log(INFO, "round %d: clients' DP epsilon %.3g to %.3g", server_round, min(epsilons), max(epsilons))
        metrics = MetricRecord({"accepted": accepted, "rejected": rejected, "failed": failed,
                                "pool-sets": len(self.pool),
                                "pool-images": sum(e.sset.num_images for e in self.pool.values())})
        if not self.pool:
            return None, metrics
        return self.train_global(server_round), metrics

    def check_extra(self, message: Message, sset: SyntheticSet) -> dict[str, torch.Tensor] | None:
        """What a reply carries beside its set, validated (``InvalidSyntheticSet`` if bad); FedCond: nothing."""
        return None

    def train_global(self, server_round: int, extra_loss: Any = None) -> ArrayRecord:
        """The global model trained on the pool (continuing from the one sent when iterative)."""
        start = self.global_arrays if self.iterative else None  # FedDM: keep improving the global model
        return self.train_pool([e.sset for e in self.pool.values()], server_round, start, extra_loss)

    def provenance(self) -> list[dict[str, Any]]:
        """Where every pooled set came from (client, round, size, classes)."""
        return [e.provenance() for e in self.pool.values()]

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The pool (each set serialised, as it would be saved) and the rejections."""
        tensors = {f"pool/{key}": tensor_of_bytes(e.sset.to_bytes()) for key, e in self.pool.items()}
        tensors.update({f"extra/{key}/{name}": t for key, e in self.pool.items()
                        for name, t in (e.extra or {}).items()})
        entries = [{"key": key, "node_id": e.node_id, "partition_id": e.partition_id, "round": e.server_round,
                    "nbytes": e.nbytes, "extra": sorted(e.extra or {})} for key, e in self.pool.items()]
        return tensors, {"pool": entries, "rejections": self.rejections}

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """Restore what :meth:`state` gave (pool order included: it is the training order)."""
        self.pool = {
            e["key"]: PoolEntry(SyntheticSet.from_bytes(tensors[f"pool/{e['key']}"].numpy().tobytes()), e["node_id"],
                                e["partition_id"], e["round"], e["nbytes"],
                                {n: tensors[f"extra/{e['key']}/{n}"] for n in e["extra"]} if e.get("extra") else None)
            for e in state["pool"]
        }
        self.rejections = list(state["rejections"])
