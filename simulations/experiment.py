"""One comparison end to end: partitions + histogram, every strategy, references, report files.

Writes into ``out``: ``results.json``, ``accuracy_vs_bytes.png`` (and with DP clients
``accuracy_vs_epsilon.png``), ``results.md``,
``label_histogram.json``, ``label_histogram.png``, ``flower.log`` (Flower's log) and
``checkpoints/`` (one folder per run, see :mod:`fedcond.simulations.runner`, and
``reference.json``, the centralised reference under its inputs: the same call again resumes
and reads the reference back). Used by ``fedcond federate`` and the benchmark script.

results.json: ``runs`` (the strategies asked for), ``reference`` (the centralised upper
bound), ``reference_runs`` (random real images and FedCond in the other storage dtypes,
:mod:`fedcond.federated.references`) and ``raw_data_upload_bytes`` (every client sending
its whole partition), beside the settings, the machine record and ``peak_memory`` (of
this process and all the processes it started, :mod:`fedcond.simulations.usage`) and
``cpu_seconds`` (their CPU time).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from fedcond.federated.config import FederateConfig
from fedcond.federated.data_cache import get_dataset
from fedcond.federated.events import OnEvent
from fedcond.federated.partition import cached_partitions, label_histogram
from fedcond.federated.references import cached_reference, plan_runs, raw_data_upload
from fedcond.federated.report import (
    annotate_privacy,
    markdown_table,
    plot_accuracy_vs_bytes,
    plot_accuracy_vs_epsilon,
    plot_label_histogram,
    privacy_table,
    write_results,
)
from fedcond.runinfo import run_record, write_json
from fedcond.simulations.usage import TreeUsage


def save_partitions(cfg: FederateConfig, out: Path) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Compute the run's partitions (exactly as the clients will) and save their histogram."""
    data = get_dataset(cfg.dataset, cfg.data_dir, cfg.normalize)
    # Stored on disk too: every simulation process then reads them instead of recomputing.
    parts = list(cached_partitions(cfg.dataset, cfg.data_dir, cfg.num_clients, cfg.partition, cfg.alpha,
                                   cfg.classes_per_client, cfg.seed))
    hist = label_histogram(data.train_labels, parts, data.num_classes)
    write_json(out / "label_histogram.json", {"classes": list(data.classes), "partition": cfg.partition,
                                              "alpha": cfg.alpha, "seed": cfg.seed, "histogram": hist})
    plot_label_histogram(hist, data.classes, out / "label_histogram.png", experiment_title(cfg))
    return hist, parts


def experiment_title(cfg: FederateConfig) -> str:
    """What a reader needs to place a figure: data set, clients, partition, seed."""
    partition = {"dirichlet": f"Dirichlet alpha={cfg.alpha:g}",
                 "pathological": f"{cfg.classes_per_client} classes per client"}.get(cfg.partition, cfg.partition)
    return f"{cfg.dataset}: {cfg.num_clients} clients, {partition}, seed {cfg.seed}"


def run_experiment(
    cfg: FederateConfig,
    strategies: list[str],
    out: Path,
    resources: dict[str, Any] | None = None,
    reference: str = "full",
    on_event: OnEvent | None = None,
) -> dict[str, Any]:
    """Run ``strategies`` and their references on identical partitions; write and return the results.

    ``reference``: ``none``, ``full`` (train on all data centrally to a plateau) or
    ``distill`` (also run the FedCond method centrally at the pooled images per class).
    The reference runs follow ``cfg.storage_dtypes`` and ``cfg.random_reference``.
    """
    out.mkdir(parents=True, exist_ok=True)
    with TreeUsage() as usage:
        return _run(cfg, strategies, out, resources, reference, on_event, usage)


def _run(cfg: FederateConfig, strategies: list[str], out: Path, resources: dict[str, Any] | None, reference: str,
         on_event: OnEvent | None, usage: TreeUsage) -> dict[str, Any]:
    from fedcond.simulations.runner import run_all  # noqa: PLC0415

    start = time.perf_counter()

    hist, parts = save_partitions(cfg, out)
    planned = plan_runs(cfg, strategies)
    records = run_all(planned, resources, on_event, log_file=out / "flower.log", checkpoints=out / "checkpoints")
    records = [annotate_privacy(r) for r in records]  # each client's DP epsilon, and the run's
    runs = [r for r, p in zip(records, planned) if p.kind is None]
    reference_runs = [r for r, p in zip(records, planned) if p.kind is not None]
    raw = raw_data_upload(get_dataset(cfg.dataset, cfg.data_dir, cfg.normalize), parts)
    ref: dict[str, Any] = {}
    if reference != "none":
        total_ipc = None
        if reference == "distill":
            pooled = max((sum(p["num_images"] for p in r.get("pool_provenance", [])) for r in runs), default=0)
            total_ipc = max(1, round(pooled / len(hist[0]))) if pooled else cfg.ipc * cfg.num_clients
        # kept under its inputs beside the runs' checkpoints: a rerun reads it back
        data = get_dataset(cfg.dataset, cfg.data_dir, cfg.normalize)
        ref = cached_reference(out / "checkpoints", data, cfg, total_ipc, on_event)
    meta = {"config": cfg.to_json(), "strategies": strategies, "reference": ref, "reference_runs": reference_runs,
            "raw_data_upload_bytes": raw["upload_bytes"], "raw_data": raw,
            "record": run_record(torch.device(cfg.device), wall_time_s=time.perf_counter() - start),
            "precision": cfg.resolved_precision(),  # what "auto" ran as here (fedcond.precision)
            # the peaks of this process and every process it started (Ray's workers), all runs
            "peak_memory": usage.to_json(), "cpu_seconds": usage.cpu_seconds(refresh=True)}
    write_results(out, runs, meta)
    plot_accuracy_vs_bytes(runs, out / "accuracy_vs_bytes.png", ref, reference_runs, raw["upload_bytes"],
                           title=experiment_title(cfg))
    table = markdown_table(runs, ref, reference_runs, raw["upload_bytes"])
    privacy = privacy_table(runs + reference_runs)
    if privacy:
        table += "\n" + privacy
    epsilon_plot = plot_accuracy_vs_epsilon(runs + reference_runs, out / "accuracy_vs_epsilon.png", ref)
    (out / "results.md").write_text(f"# {experiment_title(cfg)}\n\n{table}")
    return {"runs": runs, **meta, "table": table, "epsilon_plot": str(epsilon_plot) if epsilon_plot else None}
