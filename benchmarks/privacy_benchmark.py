"""Privacy benchmark: what synthetic sets reveal (audit) and what DP-DM costs in accuracy.

One cell per kind of set, all at the same IPC: random real images, DM from real images
(DM's default), DM from noise, DP-DM at epsilon 1 and 10 (delta 1e-5; the default ``release``
mechanism), and DP-DM with the ``iterate`` mechanism at the same epsilons (which mechanism
measures better). Each cell distills the set, then audits it (:func:`fedcond.audit.set_audit.audit_set`):
near-copy share, loss-attack membership AUC and TPR at 1 % FPR on models trained with the
evaluation protocol — whose test accuracy is the set's accuracy. Membership is reported per
member group, never mixed: 2,000 random training images (the same group for every set),
and, separately, the images a set started from (random real images: the images
themselves; DM from real images: its seeds). Data are normalised with public constants in
every cell (DP-DM refuses statistics of the private images).

Usage (what produced benchmarks/results/privacy_digits.* and privacy_mnist.*):

    python benchmarks/privacy_benchmark.py --dataset digits --threads 1 --iterate-option sample_rate=0.1
    nice -n 10 python benchmarks/privacy_benchmark.py --dataset mnist --data-dir /work/shared/data \
        --runs 1 --threads 1 --dm-option batch_real=64 --dp-option sample_rate=0.1 \
        --dp-option members_per_step=2 --dp-iterations 300 --iterate-iterations 100 \
        --iterate-option batch_real=64 --cells dp-dm-eps10,dp-dm-eps1 --redo dp-dm-eps10,dp-dm-eps1

(the second reran MNIST's DP-DM cells after DP-DM's noise source changed; its iterate cells
were never run: they need ``--iterate-option sample_rate=Q``, which the run's settings lack).

Resumable: results/privacy_<dataset>.json is rewritten after every cell, and a re-run with
the same settings skips the cells it holds (``--cells`` picks some; ``--redo`` reruns some,
e.g. after a change to one method; ``--fresh`` starts over). Files written before the
normalisation was a setting used the data set's default constants: they are read as such.
Writes results/privacy_<dataset>.{json,md} with the command, machine and versions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedcond.audit.set_audit import AuditConfig, audit_set
from fedcond.commands.common import parse_options
from fedcond.data import load_dataset
from fedcond.distill import get_distiller
from fedcond.evaluate import EvalConfig
from fedcond.runinfo import package_versions, run_record, write_json

# cell -> (method, options); DP cells get --dp-option, DM cells --dm-option.
CELLS: dict[str, tuple[str, dict[str, Any]]] = {
    "random-real": ("random", {}),
    "dm-real-init": ("dm", {"init": "real"}),
    "dm-noise-init": ("dm", {"init": "noise"}),
    "dp-dm-eps1": ("dp-dm", {"epsilon": 1.0}),
    "dp-dm-eps10": ("dp-dm", {"epsilon": 10.0}),
    "dp-dm-iterate-eps1": ("dp-dm", {"epsilon": 1.0, "mechanism": "iterate"}),
    "dp-dm-iterate-eps10": ("dp-dm", {"epsilon": 10.0, "mechanism": "iterate"}),
}
GOALS_MNIST = "MNIST IPC10: DP-DM >= 90 % at eps 10, >= 80 % at eps 1; membership AUC of DP-DM sets <= 0.55"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--runs", type=int, default=2, help="models trained (and attacked) per set")
    p.add_argument("--epochs", type=int, default=300, help="their epochs (the evaluation protocol's)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--dm-iterations", type=int, default=100)
    p.add_argument("--dp-iterations", type=int, default=500, help="release: matching iterations (no privacy cost)")
    p.add_argument("--iterate-iterations", type=int, default=200, help="iterate: private iterations")
    p.add_argument("--dm-option", action="append", default=[], help="DM option key=value (repeatable)")
    p.add_argument("--dp-option", action="append", default=[], help="DP-DM (release) option key=value (repeatable)")
    p.add_argument("--iterate-option", action="append", default=[], help="DP-DM iterate option key=value (repeatable)")
    p.add_argument("--cells", default=",".join(CELLS), help="comma list of cells")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--fresh", action="store_true", help="ignore finished cells in the results file")
    p.add_argument("--redo", default="", help="comma list of cells to run again even if finished")
    p.add_argument("--report-only", action="store_true", help="run no cell; rewrite the markdown from the JSON")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        p.error(f"unknown cell(s) {', '.join(unknown)}; known: {', '.join(CELLS)}")
    data = load_dataset(args.dataset, data_dir=args.data_dir, normalize="public")
    out = Path(args.out)
    path = out / f"privacy_{data.name}.json"
    settings = {k: getattr(args, k) for k in ("ipc", "runs", "epochs", "delta", "dm_iterations", "dp_iterations",
                                               "iterate_iterations", "dm_option", "dp_option", "iterate_option",
                                               "seed")}
    settings["normalization"] = {"mean": list(data.mean), "std": list(data.std)}
    redo = {c.strip() for c in args.redo.split(",") if c.strip()}
    done: dict[str, Any] = {}
    record = run_record(torch.device("cpu"), command=" ".join(["python", *sys.argv]), dataset=data.name)
    record["versions"] = {**package_versions(), **_more_versions()}
    record["commands"] = [record["command"]]
    if path.exists() and not args.fresh:
        saved = json.loads(path.read_text())
        if "normalization" not in saved.get("settings", {"normalization": None}):  # written before the setting
            default = load_dataset(args.dataset, data_dir=args.data_dir)
            saved["settings"]["normalization"] = {"mean": list(default.mean), "std": list(default.std)}
        if saved.get("settings") == settings:
            done = saved.get("cells", {})
            # every command that added cells to this file, oldest first
            earlier = saved.get("commands", [saved.get("command")])
            added = [] if args.report_only else [c for c in record["commands"] if c not in earlier]
            record["commands"] = [c for c in earlier if c] + added
        else:
            print(f"{path} holds other settings: starting over (its cells are replaced)", flush=True)

    for cell in [] if args.report_only else cells:
        if cell in done and cell not in redo:
            print(f"{cell}: done before ({_summary(done[cell])})", flush=True)
            continue
        done[cell] = run_cell(cell, data, args)
        print(f"{cell}: {_summary(done[cell])}", flush=True)
        write_json(path, {**record, "settings": settings, "cells": done})  # after every cell: resumable
    write_json(path, {**record, "settings": settings, "cells": done})
    missing = [c for c in CELLS if c not in done]
    md = markdown(record, data.name, settings, done, missing)
    path.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {path} and {path.with_suffix('.md')}")


def run_cell(cell: str, data, args: argparse.Namespace) -> dict[str, Any]:
    """Distill one set and audit it; every number of the cell."""
    method, options = CELLS[cell]
    values: dict[str, Any] = {"ipc": args.ipc, **options}
    if method == "dm":
        values.update(iterations=args.dm_iterations, **parse_options(args.dm_option))
    elif method == "dp-dm":
        iterate = options.get("mechanism") == "iterate"
        values.update(delta=args.delta, iterations=args.iterate_iterations if iterate else args.dp_iterations,
                      **parse_options(args.iterate_option if iterate else args.dp_option))
    distiller = get_distiller(method)
    config = distiller.config_class.from_dict(values)
    cpu, wall = time.process_time(), time.perf_counter()
    sset = distiller.distill(data, config, torch.Generator().manual_seed(args.seed))
    distill_cpu, distill_wall = time.process_time() - cpu, time.perf_counter() - wall
    audit_cfg = AuditConfig(runs=args.runs, eval=EvalConfig(epochs=args.epochs), random_baseline=False, seed=args.seed)
    cpu, wall = time.process_time(), time.perf_counter()
    report = audit_set(sset, data, audit_cfg)
    audit_cpu, audit_wall = time.process_time() - cpu, time.perf_counter() - wall
    syn = report.synthetic.to_json()
    privacy = sset.config.get("privacy")
    return {
        "method": method, "config": config.to_dict(),
        "epsilon": privacy["epsilon"] if privacy else None, "privacy": privacy,
        "accuracy_mean": syn["test_accuracy_mean"], "accuracies": syn["test_accuracies"],
        "near_copy_share": syn["near_copy_share"],
        "membership_auc": syn["membership_auc"], "membership_tpr_at_1pct_fpr": syn["membership_tpr_at_1pct_fpr"],
        "membership_auc_all_members": syn["membership_auc_all_members"],
        "membership_tpr_at_1pct_fpr_all_members": syn["membership_tpr_at_1pct_fpr_all_members"],
        "membership_auc_seed_members": syn["membership_auc_seed_members"],
        "membership_tpr_at_1pct_fpr_seed_members": syn["membership_tpr_at_1pct_fpr_seed_members"],
        "seed_members": syn["seed_members"],
        "median_distance_to_train": syn["memorisation"]["median_distance_to_train"],
        "near_copy_threshold": syn["memorisation"]["near_copy_threshold"],
        "verdict": report.verdict,
        "distill_seconds": distill_wall, "distill_cpu_seconds": distill_cpu,
        "audit_seconds": audit_wall, "audit_cpu_seconds": audit_cpu,
        "num_images": sset.num_images,
    }


def _more_versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in ("scikit-learn",):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _summary(c: dict[str, Any]) -> str:
    eps = f"eps {c['epsilon']:.3g}, " if c.get("epsilon") is not None else ""
    return (f"{eps}accuracy {c['accuracy_mean']:.4f}, near-copies {c['near_copy_share']:.0%}, "
            f"membership AUC {c['membership_auc']:.3f}, TPR@1%FPR {c['membership_tpr_at_1pct_fpr']:.3f}")


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def markdown(record: dict[str, Any], dataset: str, settings: dict[str, Any], cells: dict[str, Any],
             missing: list[str]) -> str:
    v = record["versions"]
    lines = [
        f"# Privacy: audit and DP-DM on {dataset}, IPC {settings['ipc']}", "",
        *(f"Command: `{c}`  " for c in record.get("commands", [record["command"]])),
        f"Machine: {record['device_name']}; started {record['started_at']}  ",
        f"Versions: fedcond {v.get('fedcond')}, torch {v.get('torch')}, opacus {v.get('opacus')}, "
        f"scikit-learn {v.get('scikit-learn')}, python {v.get('python')}  ",
        f"Protocol: each set trains {settings['runs']} ConvNet(s) for {settings['epochs']} epochs (the evaluation "
        "protocol); accuracy is their mean test accuracy. Membership: loss attack on those models; members = "
        "2,000 random training images (all) and, where the set started from real images, those seed images; "
        "non-members = 2,000 random test images (all of them on digits). Near-copy: closer to a training image "
        "than 99 % of test images are (a set copying nothing shows ~1 %). DP: delta "
        f"{settings['delta']:g}, Opacus PRV accountant. Normalisation: mean {settings['normalization']['mean']}, "
        f"std {settings['normalization']['std']} (public constants).", "",
        "Membership per member group (never the worse of two groups: groups differ between sets): 'all train' is "
        "the same 2,000 random training images for every set; 'seed images' are the images the set started "
        "from, where it has them (random real: the images themselves).", "",
        "| set | epsilon | accuracy % | near-copies | AUC (all train) | TPR @ 1 % FPR (all train) "
        "| AUC (seed images) | TPR @ 1 % FPR (seed images) | distill s (CPU) | audit s (CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in cells.items():
        seed_tpr = c.get("membership_tpr_at_1pct_fpr_seed_members")
        lines.append(
            f"| {name} | {_fmt(c['epsilon'], '{:.3g}')} | {100 * c['accuracy_mean']:.1f} | {c['near_copy_share']:.0%} "
            f"| {c['membership_auc_all_members']:.3f} | {100 * c['membership_tpr_at_1pct_fpr_all_members']:.1f} % "
            f"| {_fmt(c['membership_auc_seed_members'])} | {_fmt(seed_tpr, '{:.1%}')} "
            f"| {c['distill_cpu_seconds']:.0f} | {c['audit_cpu_seconds']:.0f} |"
        )
    if missing:
        lines += ["", f"Missing cells (not run yet; the same command resumes): {', '.join(missing)}."]
    lines += ["", "Verdicts:", ""] + [f"- {name}: {c['verdict']}" for name, c in cells.items()]
    if dataset == "mnist":
        lines += ["", f"Goals: {GOALS_MNIST}."]
        for eps, need in (("10", 0.90), ("1", 0.80)):
            c = cells.get(f"dp-dm-eps{eps}")
            if c is not None:
                ok = "met" if c["accuracy_mean"] >= need else "short"
                lines.append(f"- DP-DM eps {eps}: {100 * c['accuracy_mean']:.1f} % (goal {100 * need:.0f} %): {ok}; "
                             f"membership AUC {c['membership_auc_all_members']:.3f} (goal <= 0.55): "
                             f"{'met' if c['membership_auc_all_members'] <= 0.55 else 'short'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
