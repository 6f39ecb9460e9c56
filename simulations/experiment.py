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
from fedcond.federated.data_cache import federated_data, federated_validation
from fedcond.federated.dp_folder import (
    NON_PRIVATE,
    checkpoint_root,
    combined_privacy,
    composition_line,
    dp_plan,
    is_private_run,
    strip_timings,
    write_non_private,
)
from fedcond.federated.events import OnEvent
from fedcond.federated.partition import label_histogram, run_partitions
from fedcond.federated.references import cached_reference, plan_runs, raw_data_upload
from fedcond.federated.report import (
    annotate_privacy,
    distill_cost_lines,
    markdown_table,
    plot_accuracy_vs_bytes,
    plot_accuracy_vs_epsilon,
    plot_label_histogram,
    privacy_table,
    recipe_lines,
    write_results,
)
from fedcond.runinfo import run_record, write_json
from fedcond.simulations.usage import TreeUsage


def save_partitions(cfg: FederateConfig, out: Path | None) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Compute the run's partitions (exactly as the clients will) and save their histogram."""
    data = federated_data(cfg)
    # Stored on disk too: every simulation process then reads them instead of recomputing.
    parts = list(run_partitions(cfg))
    hist = label_histogram(data.train_labels, parts, data.num_classes)
    if out is None:  # a DP run without its non-private part: exact histograms are not written
        return hist, parts
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
    from fedcond.simulations.runner import run_all

    start = time.perf_counter()
    private, left_out = cfg.dp_epsilon > 0, []
    if private:  # OUT holds DP output only; the rest runs only if asked, into OUT/non_private (dp_folder)
        cfg, strategies, reference, left_out = dp_plan(cfg, strategies, reference)
    if "dpfedavg" in strategies:  # its noise for the target epsilon, or a one-line error, before any run works
        from fedcond.federated.dp_sgd import plan_for

        plan_for(cfg.for_strategy("dpfedavg"))
    hist, parts = save_partitions(cfg, (out / NON_PRIVATE if cfg.dp_non_private else None) if private else out)
    planned = plan_runs(cfg, strategies)
    records = run_all(planned, resources, on_event, log_file=out / "flower.log", checkpoints=out / "checkpoints",
                      private=private)
    records = [annotate_privacy(r) for r in records]  # each client's DP epsilon, and the run's
    runs = [r for r, p in zip(records, planned) if p.kind is None]
    reference_runs = [r for r, p in zip(records, planned) if p.kind is not None]
    raw = raw_data_upload(federated_data(cfg), parts) if not private or cfg.dp_non_private else {"upload_bytes": None}
    ref: dict[str, Any] = {}
    if reference != "none":
        total_ipc = None
        if reference == "distill":
            pooled = max((sum(p["num_images"] for p in r.get("pool_provenance", [])) for r in runs), default=0)
            total_ipc = max(1, round(pooled / len(hist[0]))) if pooled else cfg.ipc * cfg.num_clients
        # kept under its inputs beside the runs' checkpoints: a rerun reads it back
        ref_checkpoints = checkpoint_root(out / "checkpoints", private, False)  # the upper bound is not DP
        ref = cached_reference(ref_checkpoints, federated_data(cfg), cfg, total_ipc, on_event)
    meta = {"config": cfg.to_json(), "strategies": strategies, "reference": ref, "reference_runs": reference_runs,
            # one recipe for every learner (fedcond.recipe), and the split that chose each reported round
            "recipes": {name: r.to_json() for name, r in cfg.learner_recipes().items()},
            "recipe_notes": cfg.recipe_notes,
            # the exact count follows the private class sizes: not in a DP folder
            "validation": {"fraction": cfg.val_fraction,
                           "images": None if private else int(federated_validation(cfg)[1].shape[0]),
                           "held_out": "per class from the training images before partitioning, seeded by seed"},
            "raw_data_upload_bytes": raw["upload_bytes"], "raw_data": raw,
            "record": run_record(torch.device(cfg.device), wall_time_s=time.perf_counter() - start),
            "precision": cfg.resolved_precision(),  # what "auto" ran as here (fedcond.precision)
            # the peaks of this process and every process it started (Ray's workers), all runs
            "peak_memory": usage.to_json(), "cpu_seconds": usage.cpu_seconds(refresh=True)}
    if private:  # the DP part stays here; the rest goes apart (if asked) and out of every table and plot
        runs, reference_runs, ref, meta = _split_private(out, cfg, runs, reference_runs, ref, meta, left_out)
        raw = {"upload_bytes": None}
    write_results(out, runs, meta)
    plot_accuracy_vs_bytes(runs, out / "accuracy_vs_bytes.png", ref, reference_runs, raw["upload_bytes"],
                           title=experiment_title(cfg))
    table = markdown_table(runs, ref, reference_runs, raw["upload_bytes"],
                           preamble=recipe_lines(cfg, federated_data(cfg).channels))
    cost = distill_cost_lines(runs)
    if cost:
        table += "\n" + cost
    privacy = privacy_table(runs + reference_runs)
    if privacy:
        table += "\n" + privacy
    epsilon_plot = plot_accuracy_vs_epsilon(runs + reference_runs, out / "accuracy_vs_epsilon.png", ref)
    if private:
        table += composition_line(meta["privacy"]["combined"]) + "".join(f"\nNot run (not DP): {x}." for x in left_out)
    (out / "results.md").write_text(f"# {experiment_title(cfg)}\n\n{table}")
    return {"runs": runs, **meta, "table": table, "epsilon_plot": str(epsilon_plot) if epsilon_plot else None}


def _split_private(out: Path, cfg: FederateConfig, runs: list[dict[str, Any]], reference_runs: list[dict[str, Any]],
                   ref: dict[str, Any], meta: dict[str, Any], left_out: list[str]) -> tuple[Any, ...]:
    """A DP experiment's results: its DP runs without timings, the settings and the folder's
    combined epsilon stay in OUT; the rest goes to OUT/non_private/ when asked, else nowhere."""
    apart = {k: meta.pop(k) for k in ("raw_data_upload_bytes", "raw_data", "peak_memory", "cpu_seconds")}
    apart["wall_time_s"] = meta["record"].pop("wall_time_s", None)
    others = [r for r in runs + reference_runs if not is_private_run(r)]
    runs = [strip_timings(r) for r in runs if is_private_run(r)]
    reference_runs = [strip_timings(r) for r in reference_runs if is_private_run(r)]
    meta.update(reference={}, reference_runs=reference_runs)
    meta["privacy"] = {"differentially_private": True, "combined": combined_privacy(runs + reference_runs),
                       "not_run": left_out,
                       "non_private_part": f"{NON_PRIVATE}/" if cfg.dp_non_private else None}
    if cfg.dp_non_private:
        write_non_private(out, {"runs": others, "reference": ref, **apart})
    return runs, reference_runs, {}, meta
