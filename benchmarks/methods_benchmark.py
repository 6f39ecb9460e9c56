"""Benchmark every distillation family side by side: accuracy, speed, peak memory, KD labels, cross-architecture.

For each method and IPC: distil once (wall time, seconds per iteration, peak memory),
evaluate the set with the standard protocol (R runs), optionally relabel it with a trained
teacher's temperature-scaled soft labels and evaluate again with the KD loss, and compare
with random real images of the same IPC. For one IPC, every set is also evaluated on the
six architectures. Writes ``<out>.json`` and ``<out>.md`` with the exact command, the
device and the published anchors from the issue. Examples:

    # CPU, digits (minutes)
    python benchmarks/methods_benchmark.py --dataset digits --methods dm,dd,mtt,kip,frepo --ipcs 1,10 \\
        --runs 5 --kd-temperature 4 --cross-arch-ipc 10 --threads 1 --out benchmarks/results/methods_digits
    # GPU, CIFAR-10 with paper-length runs (per-method options: METHOD:key=value)
    python benchmarks/methods_benchmark.py --dataset cifar10 --data-dir .data --device cuda --ipcs 1,10,50 \\
        --methods mtt,frepo,kip,dd,dm --iterations 5000 -o mtt:zca=true -o mtt:expert_train_epochs=50 \\
        -o mtt:num_experts=20 --eval-dsa --kd-temperature 4 --cross-arch-ipc 10 --out benchmarks/results/methods_cifar10

Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU the process's
maximum resident set size (monotone over the whole script, so only the first rows and
increases are informative).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedcond.commands.common import parse_options
from fedcond.data import load_dataset
from fedcond.distill import get_distiller
from fedcond.evaluate import EvalConfig, evaluate_architectures, evaluate_random, evaluate_synthetic
from fedcond.models import MODEL_NAMES
from fedcond.relabel import relabel as kd_relabel
from fedcond.relabel import train_teacher
from fedcond.runinfo import peak_memory_bytes
from fedcond.train import accuracy

# Published ConvNet CIFAR-10 accuracies at IPC 1/10/50 (from the issue).
ANCHORS = {"mtt": [46.3, 65.3, 71.6], "frepo": [46.8, 65.5, 71.7], "tesla": [48.5, 66.4, 72.6],
           "idc": [50.0, 67.5, 74.5], "datm": [46.9, 66.8, 76.1]}
ARCHITECTURES = ("convnet", "mlp", "lenet", "alexnet", "vgg11", "resnet18")


def method_options(method: str, global_iterations: int | None, options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    d = get_distiller(method)
    values: dict[str, Any] = {}
    fields = d.config_class.__dataclass_fields__
    if global_iterations is not None and "iterations" in fields:
        values["iterations"] = global_iterations
    values.update(options.get(method, {}))
    return values


def distill_row(
    dataset, method: str, ipc: int, values: dict[str, Any], device: torch.device, seed: int
) -> tuple[Any, dict]:
    """Distil once; return the set and its cost (wall, s/iteration, peak memory)."""
    d = get_distiller(method)
    config = d.config_class.from_dict({"ipc": ipc, **values})
    stamps: list[tuple[float, int]] = []

    def progress(i: int, total: int, metrics: dict) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append((time.perf_counter(), i))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    sset = d.distill(dataset, config, torch.Generator().manual_seed(seed), device=device, callbacks=[progress])
    wall = time.perf_counter() - t0
    per_it = None
    if len(stamps) >= 2 and stamps[-1][1] > stamps[0][1]:
        per_it = (stamps[-1][0] - stamps[0][0]) / (stamps[-1][1] - stamps[0][1])
    return sset, {"config": config.to_dict(), "distill_seconds": wall, "seconds_per_iteration": per_it,
                  "peak_memory_mb": peak_memory_bytes(device) / 2**20}


def summary(result) -> dict:
    return {"accuracy_mean": result.mean, "accuracy_std": result.std, "accuracies": result.accuracies}


def pct(entry: dict | None) -> str:
    return f"{100 * entry['accuracy_mean']:.1f} ± {100 * entry['accuracy_std']:.1f}" if entry else "—"


def markdown(result: dict) -> str:
    lines = [f"# Distillation methods benchmark: {result['dataset']}", "", f"Command: `{result['command']}`", "",
             f"Device: {result['device']} ({result['threads']} torch threads); torch {result['torch']}; "
             f"evaluation: {result['eval']}", "",
             "| method | ipc | accuracy % | with KD labels % | random real % | distill s | s/iter | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        spi = f"{row['seconds_per_iteration']:.3f}" if row.get("seconds_per_iteration") else "—"
        lines.append(f"| {row['method']} | {row['ipc']} | {pct(row.get('synthetic'))} | {pct(row.get('kd'))} | "
                     f"{pct(result['random'].get(str(row['ipc'])))} | {row['distill_seconds']:.1f} | {spi} | "
                     f"{row['peak_memory_mb']:.0f} |")
    if result.get("teacher"):
        t = result["teacher"]
        lines += [
            "",
            f"KD teacher: {t['model']} trained {t['epochs']} epochs on the real data, test accuracy "
            f"{100 * t['accuracy']:.2f} %; soft labels at temperature {t['temperature']}, students trained with the KD "
            "loss.",
        ]
    if result.get("cross_architecture"):
        archs = result["cross_architecture"]["models"]
        lines += [
            "",
            f"Cross-architecture, IPC{result['cross_architecture']['ipc']} (trained on the set, tested on real data):",
            "",
            "| method | " + " | ".join(archs) + " |",
            "|---|" + "---|" * len(archs),
        ]
        for method, accs in result["cross_architecture"]["rows"].items():
            lines.append(f"| {method} | " + " | ".join(pct(accs.get(a)) for a in archs) + " |")
    lines += ["", "Published ConvNet CIFAR-10 anchors, IPC 1/10/50: "
              + "; ".join(f"{k.upper()} {'/'.join(str(v) for v in vals)}" for k, vals in ANCHORS.items())]
    if result.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--methods", default="dm,dd,mtt,kip,frepo")
    p.add_argument("--ipcs", default="1,10")
    p.add_argument(
        "--iterations", type=int, default=None, help="iterations for every iterative method (default: each method's)"
    )
    p.add_argument("-o", "--option", action="append", default=[], help="METHOD:key=value, e.g. mtt:syn_steps=30")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--eval-dsa", action="store_true", help="train evaluation models with DSA (the CIFAR protocol)")
    p.add_argument("--eval-dsa-strategy", default="color_crop_cutout_flip_scale_rotate")
    p.add_argument("--kd-temperature", type=float, default=None, help="also evaluate each set relabelled by a teacher")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument(
        "--cross-arch-ipc", type=int, default=None, help="evaluate the sets of this IPC on all architectures"
    )
    p.add_argument("--cross-arch-runs", type=int, default=None, help="runs per architecture (default: --runs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--out", required=True, help="output path prefix (writes .json and .md)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options: dict[str, dict[str, Any]] = {}
    for item in args.option:
        method, sep, kv = item.partition(":")
        if not sep:
            p.error(f"--option expects METHOD:key=value, got {item!r}")
        options.setdefault(method, {}).update(parse_options([kv]))
    device = torch.device(args.device)
    dataset = load_dataset(args.dataset, data_dir=args.data_dir, device=device)
    eval_config = EvalConfig(epochs=args.eval_epochs, dsa=args.eval_dsa, dsa_strategy=args.eval_dsa_strategy)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.processor() or platform.machine()}"
    )
    methods = args.methods.split(",")
    ipcs = [int(v) for v in args.ipcs.split(",")]
    result: dict[str, Any] = {
        "dataset": dataset.name, "command": "python " + shlex.join(sys.argv), "device": name,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "eval": eval_config.__dict__,
        "rows": [], "random": {}, "anchors_cifar10_convnet": ANCHORS, "notes": args.note,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every row: a crash or a time limit loses nothing finished
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(result))

    teacher = None
    if args.kd_temperature is not None:
        t0 = time.perf_counter()
        teacher = train_teacher(dataset, "convnet", epochs=args.teacher_epochs, seed=args.seed)
        result["teacher"] = {"model": "convnet", "epochs": args.teacher_epochs, "temperature": args.kd_temperature,
                             "accuracy": accuracy(teacher, dataset.test_images, dataset.test_labels),
                             "seconds": time.perf_counter() - t0}
        print(json.dumps(result["teacher"]), flush=True)
    if "mtt" in methods and "experts_dir" not in options.get("mtt", {}):
        # Experts depend on the data and expert settings, not the IPC: train once, reuse across rows and reruns.
        options.setdefault("mtt", {})["experts_dir"] = str(out.parent / f"experts_{dataset.name}")
    cross_sets = {}
    for ipc in ipcs:
        result["random"][str(ipc)] = summary(evaluate_random(dataset, ipc, eval_config, runs=args.runs, seed=args.seed))
        for method in methods:
            sset, row = distill_row(
                dataset, method, ipc, method_options(method, args.iterations, options), device, args.seed
            )
            row = {"method": method, "ipc": ipc, **row}
            row["synthetic"] = summary(evaluate_synthetic(sset, dataset, eval_config, runs=args.runs, seed=args.seed))
            if teacher is not None:
                if sset.config.get("zca"):
                    row["kd_note"] = "skipped: ZCA-space set and a pixel-space teacher"
                else:
                    soft = kd_relabel(sset, teacher, args.kd_temperature)
                    row["kd"] = summary(evaluate_synthetic(soft, dataset, eval_config, runs=args.runs, seed=args.seed))
            if ipc == args.cross_arch_ipc:
                cross_sets[method] = sset
            result["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
            save()
    if cross_sets:
        models = [m for m in ARCHITECTURES if m in MODEL_NAMES]
        rows = {}
        for method, sset in cross_sets.items():
            res = evaluate_architectures(
                sset, dataset, models, eval_config, runs=args.cross_arch_runs or args.runs, seed=args.seed
            )
            rows[method] = {r.config.model: summary(r) for r in res}
            print(json.dumps({method: {m: v["accuracy_mean"] for m, v in rows[method].items()}}), flush=True)
        result["cross_architecture"] = {"ipc": args.cross_arch_ipc, "models": models, "rows": rows}
    save()
    print(markdown(result))


if __name__ == "__main__":
    main()
