"""FedAF (Wang et al., CVPR 2024, "An Aggregation-Free Federated Learning for Tackling Data
Heterogeneity"): the server side.

No model is averaged. Every round the server sends the global model and, from the second
round on, the global knowledge (per class, the clients' aggregated mean logits of the global
model on their real images) in a ``fedaf-knowledge`` ArrayRecord of the same message, so the
metered grid counts it with the model. Each client condenses its data collaboratively
(:mod:`fedcond.federated.fedaf`) and replies with its set and its soft labels (class-mean
logits on its real images, with class counts) in a ``fedaf-soft-labels`` ArrayRecord. The
server validates both (:meth:`FedAF.check_extra`; a bad reply is rejected whole), keeps each
client's newest set and soft labels, and trains the global model, continuing from the one it
sent, on the union of the sets with cross-entropy plus ``lambda_global`` times the
distillation to the aggregated soft labels; those become the next round's global knowledge.

Reply validation, the pool, checkpoints and the training recipe are FedCond's
(:class:`fedcond.strategies.fedcond.FedCond`).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedcond.federated.fedaf import KNOWLEDGE_KEY, SOFT_LABELS_KEY, aggregate_knowledge, server_loss
from fedcond.strategies.fedcond import FedCond
from fedcond.synthetic import InvalidSyntheticSet, SyntheticSet


class FedAF(FedCond):
    """Aggregation-free FL: pooled condensed sets plus the clients' soft labels (module docstring)."""

    def __init__(self, *args: Any, lambda_global: float, temperature: float, lambda_local: float | None = None,
                 **kwargs: Any) -> None:
        """FedCond's arguments (always iterative), and the server's distillation: its weight
        ``lambda_global`` beside cross-entropy and the soft labels' ``temperature``;
        ``lambda_local``, the clients' knowledge-matching weight, for :meth:`summary` only."""
        super().__init__(*args, **{**kwargs, "iterative": True})
        self.lambda_global, self.temperature, self.lambda_local = lambda_global, temperature, lambda_local
        self.knowledge: tuple[torch.Tensor, torch.Tensor] | None = None  # (C, C) logits, (K,) classes

    def summary(self) -> None:
        log(INFO, "\t├──> FedAF (Wang et al., CVPR 2024): ipc %d, %s iterations a round, lambda local %s, "
            "lambda global %g, temperature %g", self.ipc, self.iterations, self.lambda_local, self.lambda_global,
            self.temperature)
        FedAvg.summary(self)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedCond's messages (settings and model), with the global knowledge once there is one."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.knowledge is not None:
            logits, classes = self.knowledge
            record = ArrayRecord({"logits": logits.float().contiguous(), "classes": classes.long().contiguous()})
            for msg in messages:
                msg.content[KNOWLEDGE_KEY] = record
        return messages

    def check_extra(self, message: Message, sset: SyntheticSet) -> dict[str, torch.Tensor]:
        """The reply's soft labels: ``logits`` (C, C) float32, finite; ``counts`` (C,) int64, >= 0, not all 0."""
        content = message.content
        if SOFT_LABELS_KEY not in content.array_records:
            raise InvalidSyntheticSet(f"reply lacks FedAF's soft labels (the '{SOFT_LABELS_KEY}' ArrayRecord)")
        record = content[SOFT_LABELS_KEY]
        if set(record.keys()) != {"logits", "counts"}:
            raise InvalidSyntheticSet(f"soft labels: expected arrays 'logits' and 'counts', got "
                                      f"{sorted(record.keys())}")
        try:
            logits = torch.from_numpy(record["logits"].numpy().copy())
            counts = torch.from_numpy(record["counts"].numpy().copy())
        except (TypeError, ValueError) as err:
            raise InvalidSyntheticSet(f"soft labels: cannot read arrays: {err}") from None
        k = self.data.num_classes
        if logits.shape != (k, k) or logits.dtype != torch.float32:
            raise InvalidSyntheticSet(f"soft labels: logits are {tuple(logits.shape)} {logits.dtype}, expected "
                                      f"({k}, {k}) float32")
        if counts.shape != (k,) or counts.dtype != torch.int64:
            raise InvalidSyntheticSet(f"soft labels: counts are {tuple(counts.shape)} {counts.dtype}, expected ({k},) "
                                      "int64")
        if not torch.isfinite(logits).all() or (counts < 0).any() or int(counts.sum()) == 0:
            raise InvalidSyntheticSet("soft labels: logits must be finite and counts >= 0, not all 0")
        return {"logits": logits, "counts": counts}

    def train_global(self, server_round: int, extra_loss: Any = None) -> ArrayRecord:
        """Aggregate the pool's soft labels (the next round's knowledge too), then train with
        cross-entropy plus the distillation to them."""
        self.knowledge = self._aggregate()
        loss = server_loss(self.knowledge, self.data.num_classes, self.lambda_global, self.temperature)
        return super().train_global(server_round, loss)

    def _aggregate(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        stats = [(e.extra["logits"], e.extra["counts"]) for e in self.pool.values() if e.extra]
        return aggregate_knowledge(stats) if stats else None

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        """FedCond's pool, and the knowledge aggregated from its soft labels."""
        super().load_state(tensors, state)
        self.knowledge = self._aggregate()
