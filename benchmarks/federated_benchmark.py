"""Federated benchmark: FedCond (one-shot, iterative) vs FedAvg / FedProx, accuracy vs upload.

    python benchmarks/federated_benchmark.py --dataset digits --alphas 0.1,0.5 --rounds 10 \
        --tune --out benchmarks/results

For every Dirichlet alpha: (1) optionally a small FedAvg grid (client lr x local epochs,
same partitions, same round budget) whose best cell sets FedAvg's and FedProx's settings —
the grid is recorded beside the results; (2) all strategies on identical partitions with a
centralised reference (full data, and the FedCond method centrally at the pooled IPC).
Writes ``federated_<dataset>.json`` and ``federated_<dataset>.md`` into ``--out``, with the
command line and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedcond.federated.config import FederateConfig  # noqa: E402
from fedcond.runinfo import device_description, package_versions  # noqa: E402


def tune_fedavg(cfg: FederateConfig, lrs: list[float], epochs: list[int]) -> list[dict]:
    """Final FedAvg accuracy for every (lr, local epochs) on the run's partitions."""
    from simulations.runner import run_strategy  # noqa: PLC0415

    grid = []
    for lr, ep in itertools.product(lrs, epochs):
        record = run_strategy(dataclasses.replace(cfg, strategy="fedavg", lr=lr, local_epochs=ep))
        grid.append({"lr": lr, "local_epochs": ep, "final_accuracy": record["final_accuracy"],
                     "accuracy_by_round": [r["accuracy"] for r in record["rounds"]]})
        print(f"  grid fedavg lr={lr} local_epochs={ep}: {record['final_accuracy']:.4f}", flush=True)
    return grid


def summarise(result: dict) -> dict:
    """Final accuracy and cumulative upload MB per strategy, and the goal checks."""
    runs = {r["strategy"]: r for r in result["runs"]}
    rows = {name: {"final_accuracy": r["final_accuracy"], "upload_mb": r["upload_bytes"] / 2**20,
                   "download_mb": r["download_bytes"] / 2**20, "rounds": len(r["rounds"])} for name, r in runs.items()}
    out: dict = {"strategies": rows}
    if "fedavg" in runs:
        avg = runs["fedavg"]
        for name in ("fedcond", "fedcond-iterative"):
            if name not in runs:
                continue
            fc = runs[name]
            reach = next((r for r in fc["rounds"] if r["accuracy"] >= avg["final_accuracy"]), None)
            out[f"{name}_reaches_fedavg_accuracy"] = reach is not None
            out[f"{name}_upload_fraction_of_fedavg"] = (reach or fc["rounds"][-1])["upload_bytes"] / avg["upload_bytes"]
    ref = result.get("reference", {})
    if "centralised_distill_accuracy" in ref and "fedcond" in runs:
        out["oneshot_over_centralised_distill"] = runs["fedcond"]["final_accuracy"] / ref["centralised_distill_accuracy"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data-dir", default="")
    parser.add_argument("--alphas", default="0.1,0.5")
    parser.add_argument("--num-clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10, help="round budget of FedAvg/FedProx/iterative FedCond")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--server-epochs", type=int, default=150)
    parser.add_argument("--strategies", default="fedcond,fedcond-iterative,fedavg,fedprox")
    parser.add_argument("--tune", action="store_true", help="grid-search FedAvg lr x local epochs first")
    parser.add_argument("--grid-lr", default="0.01,0.05,0.1")
    parser.add_argument("--grid-epochs", default="1,5")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    from simulations.experiment import run_experiment  # noqa: PLC0415

    report: dict = {"command": " ".join(["python", *sys.argv]), "machine": device_description(__import__("torch").device("cpu")),
                    "versions": package_versions(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": {}}
    for alpha in [float(a) for a in args.alphas.split(",")]:
        cfg = FederateConfig(dataset=args.dataset, data_dir=args.data_dir, num_clients=args.num_clients,
                             partition="dirichlet", alpha=alpha, rounds=args.rounds, ipc=args.ipc,
                             iterations=args.iterations, server_epochs=args.server_epochs, lr=args.lr,
                             local_epochs=args.local_epochs, seed=args.seed)
        entry: dict = {}
        if args.tune:
            print(f"alpha {alpha}: tuning FedAvg", flush=True)
            grid = tune_fedavg(cfg, [float(v) for v in args.grid_lr.split(",")], [int(v) for v in args.grid_epochs.split(",")])
            best = max(grid, key=lambda g: g["final_accuracy"])
            cfg = dataclasses.replace(cfg, lr=best["lr"], local_epochs=best["local_epochs"])
            entry["fedavg_grid"] = grid
        print(f"alpha {alpha}: {args.strategies} (lr {cfg.lr}, local epochs {cfg.local_epochs})", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            result = run_experiment(cfg, args.strategies.split(","), Path(tmp), reference="distill")
        entry.update({"config": cfg.to_json(), "reference": result["reference"], "summary": summarise(result),
                      "table": result["table"],
                      "runs": [{k: v for k, v in r.items() if k not in ("pool_provenance",)} for r in result["runs"]]})
        for run in entry["runs"]:  # keep the file readable: per-client detail only as counts
            for rnd in run["rounds"]:
                rnd.pop("clients", None)
        report["settings"][f"alpha={alpha}"] = entry
        print(result["table"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"federated_{args.dataset}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [f"# Federated benchmark: {args.dataset}, {args.num_clients} clients, Dirichlet", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}", ""]
    for key, entry in report["settings"].items():
        lines += [f"## {key}", "", entry["table"], "```json", json.dumps(entry["summary"], indent=1), "```", ""]
        if "fedavg_grid" in entry:
            lines += ["FedAvg grid (final accuracy): " + ", ".join(
                f"lr {g['lr']} x {g['local_epochs']} ep: {g['final_accuracy']:.4f}" for g in entry["fedavg_grid"]), ""]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
