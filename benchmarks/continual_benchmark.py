"""Continual benchmark: distilled replay vs Avalanche's baselines, over memory sizes and seeds.

Two steps, each writing benchmarks/results/continual_<benchmark>_<step>.{json,md}:

    # 1. tune the baselines' learning rate / epochs per experience (seed 0, one memory)
    python benchmarks/continual_benchmark.py tune --benchmark split-digits
    # 2. the comparison with the tuned values, every memory size, 3 seeds
    python benchmarks/continual_benchmark.py compare --benchmark split-digits --mem-sizes 10,20,100,200

SplitMNIST / SplitCIFAR-10 read the shared mirror: ``--data-dir /work/shared/data``.
Everything runs through fedcond.continual (Avalanche's templates and EvaluationPlugin).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

from fedcond.continual.benchmarks import default_model, make_benchmark  # noqa: E402
from fedcond.continual.report import summarize, write_report  # noqa: E402
from fedcond.continual.runner import ContinualConfig, run_comparison  # noqa: E402
from fedcond.runinfo import run_record  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# The grid every baseline is tuned over (recorded with the results); distilled replay
# takes replay's tuned lr/epochs rather than a grid of its own.
GRID = {"lr": [0.003, 0.01, 0.03], "epochs": [3, 5, 10]}
GDUMB_EPOCHS = [10, 30, 60]  # GDumb retrains from scratch on its memory: it needs more passes


def tune(args: argparse.Namespace, bench, device) -> dict:
    """Grid over lr x epochs for replay, icarl, naive, joint; epochs for gdumb. Seed 0."""
    rows = []
    for strategy in ("replay", "icarl", "naive", "joint", "gdumb"):
        grid = ([{"lr": lr, "epochs": e} for lr, e in itertools.product(GRID["lr"], GRID["epochs"])]
                if strategy != "gdumb" else [{"lr": 0.01, "epochs": e} for e in GDUMB_EPOCHS])
        for point in grid:
            cfg = ContinualConfig(strategies=(strategy,), mem_sizes=(args.tune_mem,), seeds=(0,), model=args.model,
                                  batch_size=args.batch_size, **point)
            run = run_comparison(bench, cfg, Path(args.scratch) / "tune", device)[0]
            rows.append({"strategy": strategy, **point, "mem_size": run["mem_size"],
                         "final_average_accuracy": run["final_average_accuracy"], "forgetting": run["forgetting"]})
            print(rows[-1], flush=True)
    best = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        top = max((r for r in rows if r["strategy"] == strategy), key=lambda r: r["final_average_accuracy"])
        best[strategy] = {"lr": top["lr"], "epochs": top["epochs"]}
    return {"grid": rows, "best": best, "tune_mem_size": args.tune_mem}


def compare(args: argparse.Namespace, bench, device) -> dict:
    """Every strategy at every memory size and seed, with the tuned settings."""
    tuned = json.loads(Path(args.tuned).read_text())["best"] if args.tuned else {}
    replay = tuned.get("replay", {"lr": 0.01, "epochs": 5})
    overrides = {s: v for s, v in tuned.items() if s != "replay"}
    overrides["distilled-replay"] = dict(replay)  # ours uses replay's tuned values, not a grid of its own
    cfg = ContinualConfig(strategies=tuple(args.strategies.split(",")), mem_sizes=tuple(int(m) for m in args.mem_sizes.split(",")),
                          seeds=tuple(range(args.seeds)), model=args.model, batch_size=args.batch_size,
                          lr=replay["lr"], epochs=replay["epochs"], method=args.method, iterations=args.iterations,
                          rebalance=args.rebalance,
                          overrides=overrides)
    out = Path(args.scratch) / "compare"

    def progress(done: int, total: int, e: dict) -> None:
        print(f"[{done}/{total}] {e['strategy']} mem {e['mem_size']} seed {e['seed']}: "
              f"{e['final_average_accuracy']:.3f} ({e['wall_time_s']:.0f} s)", flush=True)

    runs = run_comparison(bench, cfg, out, device, progress)
    write_report(runs, out, {"benchmark": bench.name})
    return {"config": cfg.__dict__, "tuned": tuned, "runs": runs, "summary": summarize(runs), "plots": str(out)}


def markdown(result: dict, step: str, command: str, record: dict) -> str:
    lines = [f"# Continual {step}: {record['benchmark']}", "", f"Command: `{command}`", "",
             f"Device: {record['device_name']}; torch {record['versions']['torch']}, avalanche-lib {record['versions']['avalanche-lib']}; "
             f"wall time {record['wall_time_s']:.0f} s.", ""]
    if step == "tune":
        lines += ["| strategy | lr | epochs/exp | memory | final avg acc | forgetting |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['strategy']} | {r['lr']} | {r['epochs']} | {r['mem_size']} | {r['final_average_accuracy']:.3f} | {r['forgetting']:.3f} |"
                  for r in result["grid"]]
        lines += ["", "Best: " + ", ".join(f"{s}: lr {v['lr']}, {v['epochs']} epochs" for s, v in result["best"].items())]
    else:
        lines += ["| strategy | memory | final avg acc (mean ± std) | forgetting |", "|---|---|---|---|"]
        for s in sorted(result["summary"], key=lambda s: (s["mem_size"], s["strategy"])):
            lines.append(f"| {s['strategy']} | {s['mem_size']} | {s['final_average_accuracy_mean']:.3f} ± {s['final_average_accuracy_std']:.3f} "
                         f"| {s['forgetting_mean']:.3f} ± {s['forgetting_std']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("tune", "compare"))
    p.add_argument("--benchmark", default="split-digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-fraction", type=float, default=1.0)
    p.add_argument("--model", default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tune-mem", type=int, default=20)
    p.add_argument("--tuned", default=None, help="tune step's JSON (default: results/continual_<benchmark>_tune.json if present)")
    p.add_argument("--strategies", default="naive,replay,gdumb,icarl,distilled-replay,joint")
    p.add_argument("--mem-sizes", default="10,20,100,200")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--method", default="dm")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--rebalance", default=None, help="distilled replay: subselect, redistill or nested (default: ContinualConfig's)")
    p.add_argument("--out-stem", default=None, help="results file stem (default continual_<benchmark>)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scratch", default="runs/continual_benchmark")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.model = args.model or default_model(args.benchmark)
    bench = make_benchmark(args.benchmark, data_dir=args.data_dir, train_fraction=args.train_fraction)
    stem = args.out_stem or f"continual_{bench.name}" + (f"_frac{args.train_fraction:g}" if args.train_fraction < 1 else "")
    if args.rebalance is None:
        args.rebalance = ContinualConfig.rebalance
    if args.step == "compare" and args.tuned is None and (RESULTS / f"{stem}_tune.json").exists():
        args.tuned = str(RESULTS / f"{stem}_tune.json")
    device = torch.device("cpu")
    start = time.perf_counter()
    result = tune(args, bench, device) if args.step == "tune" else compare(args, bench, device)
    record = run_record(device, benchmark=bench.name, wall_time_s=time.perf_counter() - start, args=vars(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}_{args.step}.json").write_text(json.dumps({**record, **result}, indent=1, default=str) + "\n")
    (RESULTS / f"{stem}_{args.step}.md").write_text(markdown(result, args.step, record["command"], record))
    print(markdown(result, args.step, record["command"], record))


if __name__ == "__main__":
    main()
