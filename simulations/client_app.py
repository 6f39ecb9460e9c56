"""The Flower ClientApp: distill (FedCond) or train locally (FedAvg/FedProx/FedAdam; DP-SGD for DP-FedAvg).

Everything a client needs comes from the run config (``[tool.flwr.app.config]``, or the
runner's overrides) and its node config (``partition-id``): it loads the data set,
rebuilds the seeded partitions (memoised per process) and takes its own. ``app`` is what
``flwr run .`` and SuperNodes load; :func:`make_client_app` builds one with overrides for
the in-process runner.

Fault injection: with ``fail-fraction`` f, each (round, partition) fails with probability
f, drawn from a generator seeded by (seed, round, partition) so a run is reproducible;
``fail-mode = "raise"`` raises (Flower turns it into an error reply), ``"corrupt"`` sends
a syntactically valid but NaN-filled set (the server must reject it).

A client whose set carries a DP guarantee (``--dp-epsilon``) says nothing exact about its
data in the reply: no exact ``num-examples`` (the noisy total of its release instead) and
no ``distill-seconds`` (its time grows with its data's size).

FedDM and FedAF clients (strategies ``feddm``, ``fedaf``) take the same path as iterative
FedCond's; a FedAF client also reads the server's global knowledge from the message and
replies with its soft labels (:mod:`fedcond.federated.fedaf`). Every distilling client
reports ``distill-cpu-seconds``: the CPU time of its distillation this round (the thread's
with one torch thread, else the process's), beside the bytes it uploads.

Iterative FedCond, FedDM and FedAF clients keep their last set in Flower's node state for the next
round. That state lives only as long as the federation: when the run checkpoints
(``checkpoint-dir``), each client also keeps its set in ``<checkpoint-dir>/clients/``
under its partition and round, and after a restart refines the newest one from before
the current round, as it would have from its node state.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcond.data import ImageDataset
from fedcond.federated.client_progress import progress_writer
from fedcond.federated.config import AppConfig
from fedcond.federated.data_cache import federated_data
from fedcond.federated.partition import run_partitions
from fedcond.federated.records import (
    ARRAYRECORD_KEY,
    CONFIGRECORD_KEY,
    KNOWLEDGE_KEY,
    SET_ARRAYS_KEY,
    SET_META_KEY,
    SOFT_LABELS_KEY,
    load_record,
    message_nbytes,
    model_to_record,
    new_model,
    set_from_records,
    set_to_records,
)
from fedcond.federated.set_reuse import keep_set, load_kept_set
from fedcond.synthetic import SyntheticSet

PREVIOUS_SET = "fedcond-previous-set"
PREVIOUS_META = "fedcond-previous-meta"


def injected_failure(cfg: AppConfig, server_round: int, partition_id: int) -> bool:
    """Whether this client fails this round (seeded by run seed, round and partition)."""
    if cfg.fail_fraction <= 0:
        return False
    return random.Random(f"{cfg.seed}:{server_round}:{partition_id}").random() < cfg.fail_fraction


def _local_data(cfg: AppConfig, partition_id: int):
    parts = run_partitions(cfg)
    if not 0 <= partition_id < len(parts):
        raise ValueError(f"partition-id {partition_id} outside [0, {len(parts)}): check num-clients in the run config")
    return federated_data(cfg).subset(parts[partition_id], name=cfg.dataset)


def _fedcond_reply(msg: Message, context: Context, cfg: AppConfig, pid: int, server_round: int) -> RecordDict:
    from fedcond.federated.client_training import client_seed, distill_partition

    data = _local_data(cfg, pid)
    global_model, previous, knowledge = None, None, None
    if KNOWLEDGE_KEY in msg.content.array_records:  # FedAF's global knowledge (from round 2 on)
        record = msg.content[KNOWLEDGE_KEY]
        knowledge = tuple(torch.from_numpy(record[k].numpy().copy()) for k in ("logits", "classes"))
    if msg.content[CONFIGRECORD_KEY]["mode"] == "iterative":  # refine against the global model
        global_model = load_record(new_model(data, cfg), msg.content[ARRAYRECORD_KEY])
        if PREVIOUS_SET in context.state.array_records:
            previous = set_from_records(context.state[PREVIOUS_SET], context.state[PREVIOUS_META])
        elif cfg.checkpoint_dir:  # a restarted federation: node state is gone, the client's file is not
            previous = _kept_set(cfg, pid, server_round)
    start, cpu_start = time.perf_counter(), _cpu_clock()
    # One-shot sets are kept per client: a storage-dtype reference re-encodes them (set_reuse).
    sset = load_kept_set(cfg, pid) if global_model is None else None
    reused = sset is not None
    if sset is None:
        # with a checkpoint folder, the distillation's progress goes there for the console to show
        progress = [progress_writer(cfg.checkpoint_dir, pid, server_round)] if cfg.checkpoint_dir else None
        sset = distill_partition(data, cfg, seed=client_seed(cfg, pid, server_round), global_model=global_model,
                                 previous=previous, knowledge=knowledge, callbacks=progress)
        if global_model is None:
            keep_set(cfg, pid, sset)
    seconds, cpu_seconds = time.perf_counter() - start, _cpu_clock() - cpu_start
    arrays, meta = set_to_records(sset)
    if global_model is not None:  # keep it for the next round's refinement (node-local state)
        context.state[PREVIOUS_SET], context.state[PREVIOUS_META] = arrays, meta
        if cfg.checkpoint_dir:
            folder = Path(cfg.checkpoint_dir) / "clients"
            folder.mkdir(parents=True, exist_ok=True)
            sset.save(folder / f"partition-{pid}-round-{server_round}.safetensors")
    if cfg.fail_mode == "corrupt" and injected_failure(cfg, server_round, pid):
        bad = sset.images.clone()
        bad[0].fill_(float("nan"))
        arrays = ArrayRecord({"images": bad.contiguous(), "labels": sset.labels.contiguous()})
    metrics = MetricRecord({"partition-id": pid, "num-images": sset.num_images, "reused-set": int(reused),
                            **_size_and_time(data, sset, seconds, cpu_seconds)})
    content = RecordDict({SET_ARRAYS_KEY: arrays, SET_META_KEY: meta})
    if cfg.strategy == "fedaf":  # the received model's class-mean logits on the client's real images
        from fedcond.federated.fedaf import class_mean_logits

        logits, counts = class_mean_logits(global_model, data.train_images, data.train_labels, data.num_classes)
        content[SOFT_LABELS_KEY] = ArrayRecord({"logits": logits.contiguous(), "counts": counts.contiguous()})
    metrics["payload-bytes"] = message_nbytes(content)  # what this reply's records weigh
    content["metrics"] = metrics
    return content


def _cpu_clock() -> float:
    """CPU seconds so far of this client's work: its thread's with one torch thread (a simulation
    may run other clients in other threads of the process), else the whole process's."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.process_time()


def _size_and_time(data: ImageDataset, sset: SyntheticSet, seconds: float, cpu_seconds: float) -> dict[str, float]:
    """What a reply says of the client's data size and its work: exact for a set without
    DP; for a DP set only the noisy total of its release (DP output, what the server may
    weight by), and no time, since both the exact count and the time grow with the
    private data's size outside the guarantee."""
    privacy = sset.config.get("privacy")
    if privacy is None:
        return {"num-examples": int(data.train_images.shape[0]), "distill-seconds": seconds,
                "distill-cpu-seconds": cpu_seconds}
    return {"num-examples": max(0.0, float(sum(privacy["noisy_class_sizes"])))}


def _kept_set(cfg: AppConfig, pid: int, server_round: int) -> SyntheticSet | None:
    """The newest set this client kept on disk in a round before ``server_round``."""
    folder = Path(cfg.checkpoint_dir) / "clients"
    rounds = [int(p.stem.rsplit("-", 1)[1]) for p in folder.glob(f"partition-{pid}-round-*.safetensors")]
    earlier = [r for r in rounds if r < server_round]
    return SyntheticSet.load(folder / f"partition-{pid}-round-{max(earlier)}.safetensors") if earlier else None


def _fedavg_reply(msg: Message, cfg: AppConfig, pid: int, server_round: int) -> RecordDict:
    from fedcond.federated.client_training import client_seed, local_train

    data = _local_data(cfg, pid)
    model = load_record(new_model(data, cfg), msg.content[ARRAYRECORD_KEY])
    mu = float(msg.content[CONFIGRECORD_KEY].get("proximal-mu", 0.0))  # FedProx puts it in the config
    gen = torch.Generator().manual_seed(client_seed(cfg, pid, server_round))
    start = time.perf_counter()
    loss = local_train(model, data.train_images, data.train_labels, cfg.local_epochs, cfg.lr, cfg.batch_size, gen, mu,
                       precision=cfg.resolved_precision(), recipe=cfg.recipe)
    metrics = MetricRecord({"num-examples": int(data.train_images.shape[0]), "train-loss": loss,
                            "train-seconds": time.perf_counter() - start, "partition-id": pid})
    return RecordDict({ARRAYRECORD_KEY: model_to_record(model), "metrics": metrics})


def _dpfedavg_reply(msg: Message, cfg: AppConfig, pid: int, server_round: int) -> RecordDict:
    """DP-SGD local training (:mod:`fedcond.federated.dp_sgd`) under the plan the client solves
    itself from the run config. The reply states nothing exact about the data: no example
    count (FedAvg weights every client alike), no loss, no time."""
    from fedcond.federated.client_training import client_seed
    from fedcond.federated.dp_sgd import dp_local_train, plan_for

    data = _local_data(cfg, pid)
    model = load_record(new_model(data, cfg), msg.content[ARRAYRECORD_KEY])
    gen = torch.Generator().manual_seed(client_seed(cfg, pid, server_round))  # augmentation only; the noise is secret
    dp_local_train(model, data.train_images, data.train_labels, plan_for(cfg), cfg.lr, gen, cfg.recipe,
                   precision=cfg.resolved_precision())
    metrics = MetricRecord({"num-examples": 1, "partition-id": pid})
    return RecordDict({ARRAYRECORD_KEY: model_to_record(model), "metrics": metrics})


def make_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """A ClientApp reading its settings from the run config, then ``overrides``."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg = AppConfig.from_run_config(context.run_config, overrides)
        torch.set_num_threads(max(1, cfg.client_threads))
        pid = int(context.node_config["partition-id"])
        partitions = int(context.node_config.get("num-partitions", cfg.num_clients))
        if cfg.num_clients == 0:  # the federation's size: every SuperNode's num-partitions (as the server's count)
            if partitions == 0:
                raise ValueError("num-clients = 0 (the federation's size) needs num-partitions in this SuperNode's "
                                 "node config (--node-config \"partition-id=I num-partitions=N\")")
            cfg = replace(cfg, num_clients=partitions)
        if partitions != cfg.num_clients:  # the data would be cut otherwise than the server and other nodes cut it
            raise ValueError(f"this SuperNode's node config says num-partitions = {partitions} but the run config "
                             f"says num-clients = {cfg.num_clients}: make them equal")
        config: ConfigRecord = msg.content[CONFIGRECORD_KEY]
        server_round = int(config["server-round"])
        if cfg.fail_mode == "raise" and injected_failure(cfg, server_round, pid):
            raise RuntimeError(f"injected failure (client {pid}, round {server_round})")
        if cfg.distills:  # FedCond, FedDM, FedAF
            content = _fedcond_reply(msg, context, cfg, pid, server_round)
        elif cfg.strategy == "dpfedavg":
            content = _dpfedavg_reply(msg, cfg, pid, server_round)
        else:
            content = _fedavg_reply(msg, cfg, pid, server_round)
        return Message(content=content, reply_to=msg)

    return app


app = make_client_app()
