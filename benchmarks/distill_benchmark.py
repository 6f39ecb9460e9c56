"""Benchmark the matching distillers (dm, dc, dsa): seconds per iteration, peak memory, accuracy.

Writes ``<out>.json`` and ``<out>.md`` with the exact command, the device, our numbers and
the reference numbers from the "Distillation core" issue. Example (CPU, what fits):

    python benchmarks/distill_benchmark.py --dataset digits --methods dm,dc,dsa --ipcs 1,10 \\
        --iterations 100 --time-iterations 10 --runs 5 --out benchmarks/results/distill_digits

``--reference-loop`` also times a DM step written the way the authors' code is structured
(``benchmarks/reference_loops.py``) on the same machine and data, for a like-for-like speed-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import torch

from fedcond.data import load_dataset
from fedcond.distill import get_distiller
from fedcond.evaluate import EvalConfig, evaluate_random, evaluate_synthetic
from reference_loops import reference_style_dm_seconds  # benchmarks/, beside this script

REFERENCE = {
    "speed": [
        "authors' DM code on an H100: 78 ms/iteration at IPC10 on MNIST and CIFAR-10 (goal <= 8 ms)",
        "authors' DSA code on an H100: 4.1 s per outer iteration on CIFAR-10 IPC10 (goal <= 0.8 s)",
        "authors' DM loop on the 2-core CPU of this project: ~6 s/iteration on MNIST IPC10",
    ],
    "accuracy_convnet_ipc_1_10_50": {
        "mnist": {"dc": [91.7, 97.4, 98.8], "dsa": [88.7, 97.8, 99.2], "dm": [89.7, 97.5, 98.6]},
        "cifar10": {"dsa": [28.8, 52.1, 60.6], "dm": [26.0, 48.9, 63.0]},
    },
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_method(dataset, method: str, ipc: int, iterations: int, warmup: int, device: torch.device) -> dict:
    """Seconds per iteration after ``warmup`` iterations (one host sync per iteration)."""
    d = get_distiller(method)
    config = d.config_class.from_dict({"ipc": ipc, "iterations": warmup + iterations, "log_every": 1})
    stamps: dict[int, float] = {}

    cpu: dict[int, float] = {}

    def cb(i: int, total: int, metrics: dict) -> None:
        sync(device)
        stamps[i], cpu[i] = time.perf_counter(), time.process_time()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    d.distill(dataset, config, torch.Generator().manual_seed(0), device=device, callbacks=[cb])
    last = warmup + iterations
    # CPU seconds too: on a shared machine wall time includes waiting for other jobs.
    return {"seconds_per_iteration": (stamps[last] - stamps[warmup]) / iterations,
            "cpu_seconds_per_iteration": (cpu[last] - cpu[warmup]) / iterations,
            "timed_iterations": iterations, "warmup": warmup, "peak_memory_mb": peak_memory_mb(device)}


def accuracy_of(dataset, method: str, ipc: int, iterations: int, runs: int, epochs: int, device: torch.device) -> dict:
    d = get_distiller(method)
    config = d.config_class.from_dict({"ipc": ipc, "iterations": iterations})
    t0 = time.perf_counter()
    sset = d.distill(dataset, config, torch.Generator().manual_seed(0), device=device)
    distill_s = time.perf_counter() - t0
    eval_config = EvalConfig(epochs=epochs)
    ours = evaluate_synthetic(sset, dataset, eval_config, runs=runs)
    rand = evaluate_random(dataset, ipc, eval_config, runs=runs)
    return {
        "iterations": iterations,
        "distill_seconds": distill_s,
        "accuracy_mean": ours.mean,
        "accuracy_std": ours.std,
        "random_mean": rand.mean,
        "random_std": rand.std,
        "runs": runs,
        "eval_epochs": epochs,
    }


def markdown(result: dict) -> str:
    lines = [f"# Distillation benchmark: {result['dataset']}", "", f"Command: `{result['command']}`", "",
             f"Device: {result['device']} ({result['threads']} torch threads); torch {result['torch']}", "",
             "| method | ipc | s/iter (wall) | CPU s/iter | peak MB | iterations | accuracy % | random real % |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        acc = row.get("accuracy")
        a = f"{100 * acc['accuracy_mean']:.1f} ± {100 * acc['accuracy_std']:.1f}" if acc else "—"
        r = f"{100 * acc['random_mean']:.1f} ± {100 * acc['random_std']:.1f}" if acc else "—"
        it = acc["iterations"] if acc else "—"
        t = row.get("timing")
        s = f"{t['seconds_per_iteration']:.3f}" if t else "—"
        c = f"{t['cpu_seconds_per_iteration']:.3f}" if t else "—"
        m = f"{t['peak_memory_mb']:.0f}" if t else "—"
        lines.append(f"| {row['method']} | {row['ipc']} | {s} | {c} | {m} | {it} | {a} | {r} |")
    if result.get("reference_loop"):
        lines += [
            "",
            "Same machine, authors' loop structure for DM: "
            + ", ".join(
                f"IPC{k}: {v['seconds_per_iteration']:.3f} s/iter wall, {v['cpu_seconds_per_iteration']:.3f} CPU s/iter"
                for k, v in result["reference_loop"].items()
            ),
        ]
    lines += ["", "Reference numbers (from the issue):", *[f"- {s}" for s in REFERENCE["speed"]],
              f"- published ConvNet accuracy, IPC 1/10/50: {json.dumps(REFERENCE['accuracy_convnet_ipc_1_10_50'])}"]
    if result.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--methods", default="dm,dc,dsa")
    p.add_argument("--ipcs", default="1,10")
    p.add_argument("--iterations", type=int, default=0, help="iterations for the accuracy run (0: skip accuracy)")
    p.add_argument("--time-iterations", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--reference-loop", action="store_true")
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--out", required=True, help="output path prefix (writes .json and .md)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dataset = load_dataset(args.dataset, data_dir=args.data_dir, device=device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU {platform.processor() or platform.machine()}"
    )
    result = {"dataset": args.dataset, "command": "python " + shlex.join(sys.argv), "device": name,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "rows": [], "reference": REFERENCE,
              "notes": args.note}
    for method in args.methods.split(","):
        for ipc in (int(v) for v in args.ipcs.split(",")):
            row: dict = {"method": method, "ipc": ipc}
            if args.time_iterations > 0:
                row["timing"] = time_method(dataset, method, ipc, args.time_iterations, args.warmup, device)
            if args.iterations > 0:
                row["accuracy"] = accuracy_of(
                    dataset, method, ipc, args.iterations, args.runs, args.eval_epochs, device
                )
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    if args.reference_loop:
        result["reference_loop"] = {
            ipc: reference_style_dm_seconds(dataset, ipc, max(2, args.time_iterations // 2), device)
            for ipc in (int(v) for v in args.ipcs.split(","))
        }
        print(json.dumps(result["reference_loop"]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
