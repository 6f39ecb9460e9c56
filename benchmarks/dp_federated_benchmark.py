"""DP-FedCond (clients distil with DP-DM) against DP-FedAvg (clients train with DP-SGD) at the same (ε, δ).

Issue 40, item 3: at each ε of ``--epsilons``, on identical partitions, per seed:

1. ``fedcond_eps<e>``: one-shot FedCond whose clients distil with dp-dm at (ε, δ) (``fedcond
   federate --dp-epsilon e --strategies fedcond``);
2. ``tune_eps<e>_clip<c>_lr<l>`` (first seed only): DP-FedAvg's validation grid over the
   clipping norm and the client learning rate, every cell a full ``--rounds`` run at (ε, δ);
   the winner is the best validation accuracy at its selected round (validation-chosen, as
   every baseline of fedcond is tuned; the test split is never looked at to choose);
3. ``dpfedavg_eps<e>``: DP-FedAvg with the winner's clip and lr (seed 0: the winning grid
   cell itself).

Every run reports its accuracy at the round its validation accuracy picks, its traffic
(uploads plus downloads, cumulative) there, and its (ε, δ) as accounted; the JSON keeps
every round's accuracy and traffic (accuracy against traffic). Summary per ε: mean ± std
over seeds, the paired per-seed difference with its 95 % interval, and DP-FedCond's
traffic as a share of DP-FedAvg's.

Resumable: the results file is written after every cell and a rerun skips the cells it
holds (with the same settings); a cell's runs also keep their per-round checkpoints under
``--scratch``. A winner on an edge of the grid (the table says which) is answered by the same
command with more ``--grid-clip``/``--grid-lr`` values: only the new grid cells run, and the
later seeds' DP-FedAvg cells only if the winner changes. Digits in about half an hour on two CPU cores::

    nice -n 10 python benchmarks/dp_federated_benchmark.py --dataset digits --seeds 0,1,2 --epsilons 1,10

Privacy of the tuning itself (a grid chosen on the validation split, a split of the
training images) is not accounted, as with every DP-SGD paper that tunes on held-out data.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedcond.federated.config import FederateConfig
from fedcond.precision import cpu_model
from fedcond.runinfo import device_description, package_versions, shell_command, write_json
from fedcond.stats import paired_gain, spread


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options (benchmark-sized defaults: digits in about half an hour)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default="")
    p.add_argument("--num-clients", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epsilons", default="1,10")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--ipc", type=int, default=10, help="DP-FedCond: images per class per client")
    p.add_argument("--iterations", type=int, default=300,
                   help="DP-FedCond: matching iterations per client (post-processing of the one DP release)")
    p.add_argument("--server-epochs", type=int, default=150)
    p.add_argument("--rounds", type=int, default=10, help="DP-FedAvg rounds (the budget covers all of them)")
    p.add_argument("--local-epochs", type=int, default=1, help="DP-FedAvg local epochs per round")
    p.add_argument("--dp-sample-rate", type=float, default=0.2,
                   help="DP-FedAvg Poisson rate per local step (public; digits at 10 clients: ~29 of ~145 images)")
    p.add_argument("--batch-size", type=int, default=32, help="DP-FedAvg's public divisor of the noisy gradient sum")
    p.add_argument("--grid-clip", default="0.5,2", help="DP-FedAvg clipping norms tried on validation")
    p.add_argument("--grid-lr", default="0.05,0.2", help="DP-FedAvg client learning rates tried on validation")
    p.add_argument("--precision", default="float32", help="one precision for every run of the comparison")
    p.add_argument("--cpus", type=int, default=2, help="CPUs the simulation's clients share")
    p.add_argument("--device", default="cpu", help="torch device of the server and the clients (cpu, cuda)")
    p.add_argument("--client-gpus", type=float, default=None,
                   help="GPU fraction per simulated client (default: 0.25 with --device cuda, else 0)")
    p.add_argument("--scratch", default="runs/dp_federated")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--report-only", action="store_true", help="rewrite the summary from the results file, run nothing")
    return p.parse_args(argv)


def floats(text: str) -> list[float]:
    """A comma list of numbers."""
    return [float(x) for x in text.split(",") if x.strip()]


def base_config(args: argparse.Namespace, seed: int, epsilon: float, strategy: str, **extra: Any) -> FederateConfig:
    """The settings every run shares (data, partition, seed, ε, recipe, precision), and ``extra``."""
    return FederateConfig(dataset=args.dataset, data_dir=args.data_dir, num_clients=args.num_clients,
                          partition="dirichlet", alpha=args.alpha, seed=seed, strategies=strategy, strategy=strategy,
                          dp_epsilon=epsilon, dp_delta=args.delta, ipc=args.ipc, iterations=args.iterations,
                          server_epochs=args.server_epochs, rounds=args.rounds, local_epochs=args.local_epochs,
                          dp_sample_rate=args.dp_sample_rate, batch_size=args.batch_size, storage_dtypes="float32",
                          precision=args.precision, device=args.device, **extra)


def run_cell(cfg: FederateConfig, folder: Path, cpus: int, gpus: float = 0.0) -> dict[str, Any]:
    """One ``fedcond federate`` run of ``cfg.strategy`` in ``folder`` (each client ``gpus`` of a
    GPU); the run's summary."""
    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config

    result = run_experiment(cfg, [cfg.strategy], folder, backend_config(1.0, gpus, cpus), reference="none")
    run = result["runs"][0]
    curve = [{"round": r["round"], "accuracy": r["accuracy"], "val_accuracy": r["val_accuracy"],
              "traffic_bytes": r["upload_bytes"] + r["download_bytes"]} for r in run["rounds"]]
    chosen = next(r for r in curve if r["round"] == run["selected_round"])
    return {"strategy": cfg.strategy, "accuracy": run["selected_accuracy"],
            "val_accuracy": run["selected_val_accuracy"], "round": run["selected_round"],
            "traffic_bytes": chosen["traffic_bytes"], "epsilon": run["epsilon"],
            "delta": run["delta"], "privacy": run.get("privacy"), "curve": curve,
            "clip": cfg.dp_clip if cfg.strategy == "dpfedavg" else None,
            "lr": cfg.lr if cfg.strategy == "dpfedavg" else None}


GRID = ("grid_clip", "grid_lr")  # not settings of a cell: a wider grid keeps the cells it already ran


def settings_key(args: argparse.Namespace) -> dict[str, Any]:
    """What a cell's result depends on: a rerun with other values recomputes every cell. The
    grid is not among them: ``--grid-clip``/``--grid-lr`` with more values add cells (an edge
    winner's grid extended) and recompute only the later seeds' DP-FedAvg cells whose winner changed."""
    keys = ("dataset", "num_clients", "alpha", "delta", "ipc", "iterations", "server_epochs", "rounds",
            "local_epochs", "dp_sample_rate", "batch_size", "precision")
    return {k: getattr(args, k) for k in keys}


def choose(cells: dict[str, Any], seed: int, eps: float) -> dict[str, Any] | None:
    """DP-FedAvg's winner at ``eps`` over every grid cell run on ``seed`` so far (an earlier
    invocation's included): the best validation accuracy, ties to the smaller clip and lr; the
    grid and its edges hit. None before the first grid cell."""
    prefix = f"seed{seed}_tune_eps{eps:g}_"
    names = {(c["clip"], c["lr"]): n for n, c in cells.items() if n.startswith(prefix)}
    if not names:
        return None
    best = max(names, key=lambda k: (cells[names[k]]["val_accuracy"], -k[0], -k[1]))
    return {"clip": best[0], "lr": best[1], "cell": names[best], "grid_clip": sorted({k[0] for k in names}),
            "grid_lr": sorted({k[1] for k in names}), "edges": grid_edges(names, best)}


def grid_edges(grid: dict[tuple[float, float], Any], best: tuple[float, float]) -> list[str]:
    """Which edges of the (clip, lr) grid the winner sits on (a better point may lie beyond them),
    and which setting the grid did not vary."""
    edges = []
    for i, label in ((0, "clip"), (1, "lr")):
        values = sorted({k[i] for k in grid})
        if len(values) == 1:
            edges.append(f"{label} not tuned (one value)")
        elif best[i] == values[0]:
            edges.append(f"smallest {label}")
        elif best[i] == values[-1]:
            edges.append(f"largest {label}")
    return edges


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the missing cells, writing the results after each; return them."""
    args = parse_args(argv)
    out = Path(args.out) / f"dp_federated_{args.dataset}.json"
    saved = json.loads(out.read_text()) if out.is_file() else {}
    same = {k: v for k, v in saved.get("settings", {}).items() if k not in GRID} == settings_key(args)
    cells: dict[str, Any] = saved.get("cells", {}) if same else {}
    import torch

    if args.report_only:
        if "device" in saved and cpu_model() not in saved["device"]:  # files written before the model was named
            saved["device"] = f"{saved['device']}, {cpu_model()}"
        write_outputs(out, saved, args)
        return saved
    results = {"command": shell_command(sys.argv if argv is None else ["benchmarks/dp_federated_benchmark.py", *argv],
                                        drop=("--report-only",)),
               "device": f"{device_description(torch.device('cpu'))}, {cpu_model()}", "precision": args.precision,
               "versions": package_versions(), "settings": settings_key(args), "cells": cells}
    started = time.perf_counter()
    from fedcond.simulations.runner import client_gpus

    gpus = client_gpus(args.device, args.client_gpus)

    def cell(name: str, cfg: FederateConfig) -> dict[str, Any]:
        held = cells.get(name)
        if held is not None and cfg.strategy == "dpfedavg" and (held["clip"], held["lr"]) != (cfg.dp_clip, cfg.lr):
            del cells[name]  # a later seed's cell run with an earlier grid's winner: its checkpoints too
            shutil.rmtree(Path(args.scratch) / args.dataset / name, ignore_errors=True)
        if name not in cells:
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            t0 = time.perf_counter()
            cells[name] = {**run_cell(cfg, Path(args.scratch) / args.dataset / name, args.cpus, gpus),
                           "wall_seconds": time.perf_counter() - t0}
            results["wall_seconds_this_invocation"] = time.perf_counter() - started
            write_outputs(out, results, args)
            print(f"  {name}: accuracy {cells[name]['accuracy']:.4f} at round {cells[name]['round']}, "
                  f"epsilon {cells[name]['epsilon']:.3g}", flush=True)
        return cells[name]

    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:  # a seed's cells at every epsilon first: a stopped run leaves whole seeds
        for eps in floats(args.epsilons):
            cell(f"seed{seed}_fedcond_eps{eps:g}", base_config(args, seed, eps, "fedcond"))
            if seed == seeds[0]:  # the validation grid, on the first seed's partition
                for c in floats(args.grid_clip):
                    for lr in floats(args.grid_lr):
                        cell(f"seed{seed}_tune_eps{eps:g}_clip{c:g}_lr{lr:g}",
                             base_config(args, seed, eps, "dpfedavg", dp_clip=c, lr=lr))
                won = results.setdefault("winners", {})[f"eps{eps:g}"] = choose(cells, seed, eps)
                cells[f"seed{seed}_dpfedavg_eps{eps:g}"] = cells[won["cell"]]
            else:
                won = results["winners"][f"eps{eps:g}"]
                clip, lr = won["clip"], won["lr"]
                cell(f"seed{seed}_dpfedavg_eps{eps:g}", base_config(args, seed, eps, "dpfedavg", dp_clip=clip, lr=lr))
    write_outputs(out, results, args)
    return results


def write_outputs(out: Path, results: dict[str, Any], args: argparse.Namespace) -> None:
    """The JSON and the markdown summary beside it."""
    results["summary"] = summarise(results, args)
    write_json(out, results)
    out.with_suffix(".md").write_text(markdown(results, args))
    plot(results, args, out.with_suffix(".png"))


def plot(results: dict[str, Any], args: argparse.Namespace, path: Path) -> None:
    """Accuracy against cumulative traffic (log x), one panel per ε: DP-FedAvg's rounds as a
    line per seed (its tuned cell), DP-FedCond's one-shot run as a point per seed."""
    import matplotlib  # matplotlib only when a figure is drawn: seconds to import
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib only when a figure is drawn: seconds to import

    epsilons = [e for e in floats(args.epsilons) if f"eps{e:g}" in results.get("summary", {})]
    if not epsilons:
        return
    fig, axes = plt.subplots(1, len(epsilons), figsize=(5 * len(epsilons), 4), squeeze=False)
    for ax, eps in zip(axes[0], epsilons):
        for i, seed in enumerate(results["summary"][f"eps{eps:g}"]["seeds"]):
            fa = results["cells"][f"seed{seed}_dpfedavg_eps{eps:g}"]["curve"]
            fc = results["cells"][f"seed{seed}_fedcond_eps{eps:g}"]
            ax.plot([r["traffic_bytes"] / 2**20 for r in fa], [r["accuracy"] for r in fa], "-o", ms=3, color="C0",
                    alpha=0.7, label="DP-FedAvg (DP-SGD), per round" if i == 0 else None)
            ax.plot(fc["traffic_bytes"] / 2**20, fc["accuracy"], "s", color="C3",
                    label="DP-FedCond (DP-DM), one shot" if i == 0 else None)
        ax.set(xscale="log", xlabel="traffic, uploads + downloads (MiB)", ylabel="test accuracy",
               title=f"{args.dataset}, epsilon {eps:g}, delta {args.delta:g}")
        # plain numbers at 1, 2 and 5 per decade: matplotlib's own labels for a span of one or two
        # decades print every minor tick on top of another
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Per ε: both methods over the seeds that have both cells, the paired gain, the traffic share."""
    cells, summary = results["cells"], {}
    for eps in floats(args.epsilons):
        seeds = [s for s in args.seeds.split(",") if f"seed{s}_fedcond_eps{eps:g}" in cells
                 and f"seed{s}_dpfedavg_eps{eps:g}" in cells]
        if not seeds:
            continue
        fc = [cells[f"seed{s}_fedcond_eps{eps:g}"] for s in seeds]
        fa = [cells[f"seed{s}_dpfedavg_eps{eps:g}"] for s in seeds]
        summary[f"eps{eps:g}"] = {
            "seeds": seeds, "fedcond": spread([c["accuracy"] for c in fc]).to_json(),
            "dpfedavg": spread([c["accuracy"] for c in fa]).to_json(),
            "gain": paired_gain([c["accuracy"] for c in fc], [c["accuracy"] for c in fa]).to_json(),
            "fedcond_traffic_mib": sum(c["traffic_bytes"] for c in fc) / len(fc) / 2**20,
            "dpfedavg_traffic_mib": sum(c["traffic_bytes"] for c in fa) / len(fa) / 2**20,
            "epsilon_accounted": {"fedcond": max(c["epsilon"] for c in fc), "dpfedavg": max(c["epsilon"] for c in fa)},
            # from the cells, not stored: a widened or still running grid, an older results file
            "winner": choose(cells, int(args.seeds.split(",")[0]), eps),
        }
    return summary


def grid_text(winner: dict[str, Any]) -> str:
    """The grid a winner came from and the edges it sits on, in words."""
    if "grid_clip" not in winner:  # a results file from before the grid was recorded
        return "grid not recorded"
    grid = f"clip {{{', '.join(f'{c:g}' for c in winner['grid_clip'])}}} x lr " \
           f"{{{', '.join(f'{x:g}' for x in winner['grid_lr'])}}}"
    return f"{grid}; {', '.join(winner['edges']) or 'no edge'}"


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The summary as a markdown page."""
    lines = [f"# DP-FedCond against DP-FedAvg on {args.dataset}", "",
             f"Command: `{results['command']}`  ",
             f"Machine: {results['device']}; precision {results['precision']}.  ",
             f"{args.num_clients} clients, Dirichlet {args.alpha:g}, delta {args.delta:g}; DP-FedCond: one-shot, "
             f"dp-dm (release), IPC {args.ipc}, {args.iterations} matching iterations; DP-FedAvg: {args.rounds} rounds "
             f"x {args.local_epochs} local epoch(s) of DP-SGD at Poisson rate {args.dp_sample_rate:g}, clip and lr "
             f"chosen on validation (seed {args.seeds.split(',')[0]}) from the clip x lr grid in the table. "
             "Accuracy: test, at the round validation picks; traffic: uploads + downloads there.",
             "", "| epsilon | seeds | DP-FedCond | DP-FedAvg | gain (pts, paired) | FedCond MiB | FedAvg MiB | "
                 "share | FedAvg clip, lr (grid; edge hit) |", "|---|---|---|---|---|---:|---:|---:|---|"]
    for key, s in results["summary"].items():
        from fedcond.stats import Spread

        fc, fa, gain = Spread(**s["fedcond"]), Spread(**s["dpfedavg"]), Spread(**s["gain"])
        share = s["fedcond_traffic_mib"] / s["dpfedavg_traffic_mib"] if s["dpfedavg_traffic_mib"] else float("nan")
        win = s["winner"] or {}
        lines.append(f"| {key[3:]} | {','.join(s['seeds'])} | {fc.format()} | {fa.format()} | "
                     f"{gain.format(100, '+.1f')} | {s['fedcond_traffic_mib']:.3f} | {s['dpfedavg_traffic_mib']:.1f} | "
                     f"{share:.2%} | {win.get('clip')}, {win.get('lr')} ({grid_text(win)}) |")
    lines += ["", "Every cell (accuracy at the validation-chosen round, accounted epsilon):", "",
              "| cell | accuracy | val | round | traffic MiB | epsilon | noise multiplier |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in results["cells"].items():
        sigma = (c.get("privacy") or {}).get("noise_multiplier")
        lines.append(f"| {name} | {c['accuracy']:.4f} | {c['val_accuracy']:.4f} | {c['round']} | "
                     f"{c['traffic_bytes'] / 2**20:.3f} | {c['epsilon']:.4g} | "
                     f"{'-' if sigma is None else format(sigma, '.3g')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
