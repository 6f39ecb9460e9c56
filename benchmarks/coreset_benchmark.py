"""Foundation benchmark: full-data upper bound, random / herding / k-center coresets.

Usage (what produced benchmarks/results/foundation_mnist.*):

    python benchmarks/coreset_benchmark.py --dataset mnist --data-dir ../shared/data \
        --ipc 10 --runs 5 --full-epochs 4 --out benchmarks/results/foundation_mnist

Writes OUT.json (every accuracy, configs, command, device, versions) and OUT.md (table).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from fedcond.data import load_dataset
from fedcond.distill import get_distiller
from fedcond.distill.coreset import CoresetConfig
from fedcond.evaluate import EvalConfig, evaluate_full, evaluate_random, evaluate_synthetic
from fedcond.runinfo import resolve_device, run_record, write_json

# ConvNet coreset numbers as reported by Zhao et al. (ICLR 2021, Table 1), for context.
LITERATURE = {("mnist", 1): {"random": 0.649, "herding": 0.892, "kcenter": 0.893},
              ("mnist", 10): {"random": 0.951, "herding": 0.937, "kcenter": 0.844},
              ("mnist", 50): {"random": 0.979, "herding": 0.948, "kcenter": 0.974},
              ("mnist", "all"): {"full": 0.996}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--ipc", type=int, nargs="+", default=[10])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--epochs", type=int, default=300, help="evaluation epochs on coresets")
    p.add_argument("--full-epochs", type=int, default=30, help="epochs on all real data (0 skips it)")
    p.add_argument("--methods", default="random,herding,kcenter")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output path without extension")
    args = p.parse_args()

    dev = resolve_device(args.device)
    torch.manual_seed(args.seed)
    data = load_dataset(args.dataset, data_dir=args.data_dir, device=dev)
    rows, results = [], []

    def log(name: str, ipc: int | str, res, seconds: float) -> None:
        lit = LITERATURE.get((args.dataset, ipc), {}).get(name.split("-")[0])
        rows.append((name, ipc, res.num_train_images, 100 * res.mean, 100 * res.std, lit, seconds))
        results.append({"name": name, "ipc": ipc, "seconds": seconds, **res.to_json()})
        print(f"{name:>14} ipc={ipc}: {100 * res.mean:.2f} ± {100 * res.std:.2f} % ({seconds:.0f} s)", flush=True)

    if args.full_epochs > 0:
        t = time.perf_counter()
        res = evaluate_full(data, EvalConfig(epochs=args.full_epochs), runs=1, seed=args.seed,
                            on_epoch=lambda e, loss: print(f"  full-data epoch {e + 1}: loss {loss:.4f}", flush=True))
        log("full", "all", res, time.perf_counter() - t)
    cfg = EvalConfig(epochs=args.epochs)
    for ipc in args.ipc:
        for method in args.methods.split(","):
            t = time.perf_counter()
            if method == "random":
                res = evaluate_random(data, ipc, cfg, runs=args.runs, seed=args.seed)
                log("random", ipc, res, time.perf_counter() - t)
                continue
            sset = get_distiller(method).distill(
                data, CoresetConfig(ipc=ipc), torch.Generator().manual_seed(args.seed), dev
            )
            res = evaluate_synthetic(sset, data, cfg, runs=args.runs, seed=args.seed)
            log(method, ipc, res, time.perf_counter() - t)

    record = run_record(dev, command=" ".join(["python", *sys.argv]), dataset=args.dataset, results=results)
    out = Path(args.out)
    write_json(out.with_suffix(".json"), record)
    lines = [
        f"# Coreset baselines on {args.dataset} (ConvNet)", "",
        f"Command: `{record['command']}`  ",
        f"Device: {record['device_name']}; torch {record['versions']['torch']}; {record['started_at']}  ",
        f"Protocol: SGD momentum 0.9, lr 0.01 (/10 at half), wd 5e-4, batch 256; coresets {args.epochs} epochs x "
        f"{args.runs} runs; full data {args.full_epochs} epochs x 1 run.", "",
        "| train set | IPC | images | accuracy % (mean ± std) | literature % | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, ipc, n, mean, std, lit, sec in rows:
        lines.append(
            f"| {name} | {ipc} | {n} | {mean:.2f} ± {std:.2f} | {'' if lit is None else f'{100 * lit:.1f}'} | "
            f"{sec:.0f} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
