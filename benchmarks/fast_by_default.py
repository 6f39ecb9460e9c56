"""Fast by default (issue 26): each loop in float32 beside its default, one run each, on this machine.

Cells (one command each, run in a subprocess and timed from outside; accuracy read from
the command's own JSON):

- ``dm_mnist_ipc10_<p>``: ``fedcond distill`` DM on MNIST at IPC 10 (the method's defaults:
  100 iterations, 256 real images per class) in precision p, then its set evaluated;
- ``evaluate_<p>``: the evaluation protocol (``fedcond evaluate``, 300 epochs, 2 runs) on
  the float32 DM set, training in precision p;
- ``fedavg_round_<p>``: one FedAvg round on MNIST (10 clients, Dirichlet 0.5, the tuned lr
  0.05 and 1 local epoch), local training in precision p;
- ``main_job_<p>``: the README's main job (digits, FedCond / FedAvg / FedProx with every
  reference), everything in precision p;
- ``seeds_<loop>_<p>`` (float32 and bfloat16 only): accuracy over seeds on digits, to tell
  a precision's effect from run-to-run noise: the evaluation protocol (one DM set, 5 runs),
  DM (3 seeds, each set evaluated in float32), and FedCond + FedAvg on the main job's
  partitions (3 seeds; DM, the server's training and the clients' local training); and
  ``fedavg_round_seed1_<p>``: the MNIST FedAvg round again from seed 1;
- ``plugin_<p>``: the user's Avalanche script (SplitMNIST, SimpleMLP, Naive, memory 20) with
  ``DistilledReplayPlugin(mem_size=20, precision=p)``, and once ``replay``: Avalanche's
  ``ReplayPlugin(mem_size=20)`` in the same run.

``p`` is ``float32``, ``bfloat16`` and ``default`` (nothing given: ``auto``, which resolves
by the hardware; the cell records what it resolved to). Where ``auto`` resolves to a
precision already run, the default cell is that cell (not run twice). Then::

    python benchmarks/fast_by_default.py --data-dir /work/shared/data

writes benchmarks/results/fast_by_default.{json,md} after every cell, with the command,
the machine, its bfloat16-related CPU flags and the versions; the same command again skips
finished cells (``--cells`` picks some, e.g. ``--cells plugin_float32,replay``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedcond.precision import cpu_flags, resolve_precision
from fedcond.runinfo import device_description, package_versions, write_json

RESULTS = ROOT / "benchmarks" / "results"
PRECISIONS = ("float32", "bfloat16", "default")
KINDS = ("dm_mnist_ipc10", "evaluate", "fedavg_round", "main_job", "plugin")
SEED_KINDS = ("seeds_evaluate", "seeds_dm", "seeds_federate", "fedavg_round_seed1")  # float32 against bfloat16
SEEDS = (0, 1, 2)


def flag(precision: str) -> list[str]:
    """The command-line flag for a cell's precision (none for the default)."""
    return [] if precision == "default" else ["--precision", precision]


def commands(kind: str, precision: str, args: argparse.Namespace, scratch: Path) -> list[list[str]]:
    """The commands one cell runs, in order (their wall times add up)."""
    fedcond = [sys.executable, "-m", "fedcond.cli"]
    data = ["--data-dir", args.data_dir]
    out = scratch / f"{kind}_{precision}"
    if kind == "dm_mnist_ipc10":
        return [fedcond + ["distill", "--dataset", "mnist", *data, "--method", "dm", "--ipc", "10", "--threads", "1",
                           "--out", str(out), *flag(precision)],
                fedcond + ["evaluate", str(out / "synthetic.safetensors"), "--dataset", "mnist", *data, "--runs", "1",
                           "--threads", "1", "--json", str(out / "eval.json"), "--precision", "float32"]]
    if kind == "evaluate":
        return [fedcond + ["evaluate", str(scratch / "dm_mnist_ipc10_float32" / "synthetic.safetensors"), "--dataset",
                           "mnist", *data, "--runs", "2", "--threads", "1", "--json", str(out / "eval.json"),
                           *flag(precision)]]
    if kind.startswith("fedavg_round"):  # fedavg_round_seed<k>: the same round from another seed
        seed = kind.removeprefix("fedavg_round").removeprefix("_seed") or "0"
        return [fedcond + ["federate", "--seed", seed, "--dataset", "mnist", *data, "--num-clients", "10",
                           "--partition", "dirichlet", "--alpha", "0.5", "--strategies", "fedavg", "--rounds", "1",
                           "--lr", "0.05", "--local-epochs", "1", "--reference", "none", "--no-random-reference",
                           "--storage-dtypes", "float32", "--fresh", "--out", str(out), *flag(precision)]]
    if kind == "main_job":
        return [fedcond + ["federate", "--dataset", "digits", "--num-clients", "10", "--partition", "dirichlet",
                           "--alpha", "0.5", "--strategies", "fedcond,fedavg,fedprox", "--rounds", "5", "--fresh",
                           "--out", str(out), *flag(precision)]]
    if kind == "seeds_evaluate":  # one float32 DM set, trained on 5 times in precision p
        base = scratch / "digits_dm_ipc10"
        made = [] if (base / "synthetic.safetensors").exists() else [
            fedcond + ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "10", "--threads", "1",
                       "--precision", "float32", "--out", str(base)]]
        return made + [fedcond + ["evaluate", str(base / "synthetic.safetensors"), "--dataset", "digits", "--runs",
                                  "5", "--threads", "1", "--precision", precision, "--json", str(out / "eval.json")]]
    if kind == "seeds_dm":  # DM in precision p from 3 seeds, each set evaluated in float32
        cmds = []
        for seed in SEEDS:
            folder = out / f"seed{seed}"
            cmds += [fedcond + ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "10", "--seed", str(seed),
                                "--threads", "1", "--precision", precision, "--out", str(folder)],
                     fedcond + ["evaluate", str(folder / "synthetic.safetensors"), "--dataset", "digits", "--runs",
                                "2", "--threads", "1", "--precision", "float32", "--json", str(folder / "eval.json")]]
        return cmds
    if kind == "seeds_federate":  # FedCond (DM + server training) and FedAvg (local training), 3 seeds
        return [fedcond + ["federate", "--dataset", "digits", "--num-clients", "10", "--partition", "dirichlet",
                           "--alpha", "0.5", "--strategies", "fedcond,fedavg", "--rounds", "5", "--reference", "none",
                           "--no-random-reference", "--storage-dtypes", "float32", "--seed", str(seed), "--fresh",
                           "--precision", precision, "--out", str(out / f"seed{seed}")] for seed in SEEDS]
    plugin = "replay" if precision == "replay" else "distilled-replay"
    variant = "" if precision in ("default", "replay") else f"precision={precision}"
    return [[sys.executable, str(ROOT / "benchmarks" / "fast_by_default.py"), "--plugin-cell", plugin, "--variant",
             variant, "--data-dir", args.data_dir, "--json", str(out / "plugin.json")]]


def read_outcome(kind: str, precision: str, scratch: Path) -> dict[str, Any]:
    """Accuracy (and what ran) from the cell's own output files."""
    out = scratch / f"{kind}_{precision}"
    if kind == "dm_mnist_ipc10":
        run = json.loads((out / "run.json").read_text())
        ev = json.loads((out / "eval.json").read_text())
        return {"accuracy": ev["accuracy_mean"], "precision": run.get("precision"), "distill_seconds":
                run["wall_time_s"], "iterations": run.get("iterations"), "evaluated_in": ev.get("precision")}
    if kind == "evaluate":
        ev = json.loads((out / "eval.json").read_text())
        return {"accuracy": ev["accuracy_mean"], "accuracies": ev["accuracies"], "precision": ev.get("precision")}
    if kind.startswith("fedavg_round") or kind == "main_job":
        res = json.loads((out / "results.json").read_text())
        runs = {r["name"]: r["final_accuracy"] for r in res["runs"] + res.get("reference_runs", [])}
        main = runs.get("fedcond") if kind == "main_job" else runs.get("fedavg")
        seconds = {r["name"]: r.get("wall_seconds") for r in res["runs"] + res.get("reference_runs", [])}
        return {"accuracy": main, "accuracies": runs, "run_seconds": seconds, "precision": res.get("precision"),
                "upper_bound": res.get("reference", {}).get("full_data_accuracy"), "cpu_seconds":
                res.get("cpu_seconds")}
    if kind == "seeds_evaluate":
        ev = json.loads((out / "eval.json").read_text())
        return {"accuracy": ev["accuracy_mean"], "accuracies": ev["accuracies"], "precision": ev.get("precision")}
    if kind == "seeds_dm":
        evs = [json.loads((out / f"seed{s}" / "eval.json").read_text()) for s in SEEDS]
        runs = [json.loads((out / f"seed{s}" / "run.json").read_text()) for s in SEEDS]
        accs = [e["accuracy_mean"] for e in evs]
        return {"accuracy": sum(accs) / len(accs), "accuracies": accs, "precision": runs[0].get("precision"),
                "distill_seconds": [r["wall_time_s"] for r in runs]}
    if kind == "seeds_federate":
        res = [json.loads((out / f"seed{s}" / "results.json").read_text()) for s in SEEDS]
        per = {name: [next(r["final_accuracy"] for r in x["runs"] if r["name"] == name) for x in res]
               for name in ("fedcond", "fedavg")}
        return {"accuracy": sum(per["fedcond"]) / len(SEEDS), "accuracies": per, "precision": res[0].get("precision")}
    cell = json.loads((out / "plugin.json").read_text())
    return {"accuracy": cell["final_average_accuracy"], "precision": (cell.get("settings") or {}).get("precision"),
            "cpu_seconds": cell["cpu_time_s"], "settings": cell.get("settings")}


def run_cell(kind: str, precision: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmds = commands(kind, precision, args, scratch)
    (scratch / f"{kind}_{precision}").mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    usage_before = os.times()
    for cmd in cmds:
        log = scratch / f"{kind}_{precision}.log"
        with open(log, "a") as f:
            code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if code != 0:
            raise SystemExit(f"error: {kind}_{precision} failed ({shlex.join(cmd)}); see {log}")
    wall = time.perf_counter() - start
    usage = os.times()
    child_cpu = (usage.children_user - usage_before.children_user) + (usage.children_system
                                                                      - usage_before.children_system)
    return {"kind": kind, "precision_asked": precision, "wall_seconds": wall, "child_cpu_seconds": child_cpu,
            "commands": [shlex.join(c) for c in cmds], "load_average_before": load_before,
            "load_average_after": os.getloadavg(), **read_outcome(kind, precision, scratch)}


def layout_speed(reps: int = 5) -> dict[str, Any]:
    """Images per second of the ConvNet, one thread, for MNIST and CIFAR-10 shapes: DM's
    embedding pass (no gradients, chunks of 128) and a training step (forward, backward,
    batch 256), contiguous float32 / channels-last float32 / channels-last bfloat16
    autocast; layouts alternate within each repetition and the best repetition counts."""
    import torch

    from fedcond.models import ConvNet

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    variants = {"float32 contiguous": (False, torch.float32), "float32 channels-last": (True, torch.float32),
                "bfloat16 channels-last": (True, torch.bfloat16)}
    for name, (c, size) in {"mnist": (1, 28), "cifar10": (3, 32)}.items():
        x = torch.randn(256, c, size, size)
        y = torch.randint(0, 10, (256,))
        best: dict[str, float] = {}
        for _ in range(reps):
            for label, (cl, dtype) in variants.items():
                net = ConvNet(c, 10, (size, size))
                if cl:
                    net = net.to(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                    start = time.perf_counter()
                    with torch.no_grad():
                        for i in range(0, 256, 128):
                            net.embed(x[i : i + 128])
                    embed = time.perf_counter() - start
                    start = time.perf_counter()
                    loss = torch.nn.functional.cross_entropy(net(x).float(), y)
                loss.backward()
                step = time.perf_counter() - start
                best[f"embed {label}"] = min(best.get(f"embed {label}", 1e9), embed)
                best[f"train {label}"] = min(best.get(f"train {label}", 1e9), step)
        out[name] = {k: round(256 / v) for k, v in best.items()}
    return out


def layout_dm(reps: int = 3) -> dict[str, Any]:
    """Seconds per DM iteration (IPC 10, 10 classes, the default 256 real images per class,
    DSA, float32, one thread) with DM's fresh networks contiguous or channels-last, on random
    images of MNIST's and CIFAR-10's shapes (the cost does not depend on the pixels): runs of
    2 and 6 iterations, the difference over 4 (start-up excluded); layouts alternate, best of
    ``reps``. This is what ``fedcond.distill.dm.channels_last_networks`` was chosen by."""
    import torch

    import fedcond.distill.dm as dm_module
    from fedcond.data import ImageDataset
    from fedcond.distill import make_distiller

    torch.set_num_threads(1)
    chosen = dm_module.channels_last_networks
    out: dict[str, Any] = {}
    for name, (c, size) in {"mnist": (1, 28), "cifar10": (3, 32)}.items():
        x = torch.randn(5000, c, size, size, generator=torch.Generator().manual_seed(0))
        y = torch.arange(5000) % 10
        data = ImageDataset(name=name, train_images=x, train_labels=y, test_images=x[:10], test_labels=y[:10],
                            classes=tuple(str(i) for i in range(10)), mean=(0.0,) * c, std=(1.0,) * c)
        best: dict[str, float] = {}
        for _ in range(reps):
            for layout in ("contiguous", "channels-last"):
                dm_module.channels_last_networks = lambda *a, cl=layout == "channels-last": cl
                try:
                    seconds = []
                    for iterations in (2, 6):
                        dm, cfg = make_distiller("dm", {"ipc": 10, "iterations": iterations, "precision": "float32"})
                        start = time.perf_counter()
                        dm.distill(data, cfg, torch.Generator().manual_seed(0))
                        seconds.append(time.perf_counter() - start)
                finally:
                    dm_module.channels_last_networks = chosen
                best[layout] = min(best.get(layout, 1e9), (seconds[1] - seconds[0]) / 4)
        out[name] = {f"{k} s/iteration": round(v, 3) for k, v in best.items()}
        out[name]["chosen"] = "channels-last" if chosen(torch.device("cpu"), torch.float32, c) else "contiguous"
    return out


def plugin_cell(args: argparse.Namespace) -> None:
    """One run of the user's script (seed 0), written to ``--json``."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from continual_avalanche_user import mnist_root, parse_variant, run

    torch.set_num_threads(1)
    root = mnist_root(Path(args.data_dir), ROOT / "runs" / "avalanche_mnist")
    result = run(args.plugin_cell, 20, 0, root, 1, 0.01, parse_variant(args.variant))
    write_json(Path(args.json), result)


def write_report(report: dict[str, Any], path: Path) -> None:
    write_json(path, report)
    cells = report["cells"]
    lines = [
        "# Fast by default: float32 beside the default, one run each",
        "",
        "Commands (each adds cells to the same file; finished cells are kept; `--cells none` only rewrites "
        "this report): " + ", ".join(f"`{c}`" for c in report.get("commands", [])),
        "",
        f"Machine: {report['machine']}; CPU flags: {report['cpu_flags']}; `auto` resolves to "
        f"**{report['auto_resolves_to']}** here. Versions: {report['versions']}",
        "",
        "Wall seconds of the whole command (subprocess, one torch thread; the federated runs use 2 Ray "
        "workers); CPU s: the command's CPU time (federated runs: all their processes, Ray's workers included, "
        "as results.json counts them; the plugin: the script's own process during the run). The machine is "
        "shared: the load average before/after each cell is in the JSON.",
        "",
        "| what | precision asked -> ran | wall s | CPU s | accuracy | notes |",
        "|---|---|---:|---:|---:|---|",
    ]
    for c in cells.values():
        note = ""
        if c["kind"] == "main_job":
            note = ", ".join(f"{k} {v:.3f}" for k, v in (c.get("accuracies") or {}).items() if v is not None)
        elif c["kind"] in ("evaluate", "seeds_evaluate", "seeds_dm"):
            note = "runs " + " / ".join(f"{a:.4f}" for a in c.get("accuracies", []))
        elif c["kind"] == "seeds_federate":
            note = "; ".join(f"{k} " + " / ".join(f"{a:.4f}" for a in v) for k, v in c["accuracies"].items())
        elif c["kind"] == "dm_mnist_ipc10":
            note = f"distill {c.get('distill_seconds', 0):.0f} s, set evaluated in float32 (1 run)"
        if c.get("same_as"):
            note = f"auto resolved to {c['precision']}: the {c['same_as']} cell"
        acc = c.get("accuracy")
        cpu = c.get("cpu_seconds") or c.get("child_cpu_seconds", 0)  # federate: its own count, Ray's workers in
        lines.append(f"| {c['kind']} | {c['precision_asked']} -> {c.get('precision')} | {c['wall_seconds']:.0f} | "
                     f"{cpu:.0f} | {acc:.4f} | {note} |" if acc is not None else
                     f"| {c['kind']} | {c['precision_asked']} | {c['wall_seconds']:.0f} | | | {note} |")
    if "layout" in report:
        lines += ["", "ConvNet images per second, one thread (best of 5 alternating repetitions; embed: DM's "
                  "no-gradient pass in chunks of 128; train: forward + backward of a batch of 256):", "",
                  "| data | " + " | ".join(next(iter(report["layout"]["images_per_second"].values()))) + " |",
                  "|---|" + "---:|" * len(next(iter(report["layout"]["images_per_second"].values())))]
        for data, speeds in report["layout"]["images_per_second"].items():
            lines.append(f"| {data} | " + " | ".join(str(v) for v in speeds.values()) + " |")
    if "layout_dm" in report:
        lines += ["", "DM seconds per iteration in float32 (IPC 10, 256 real images per class, one thread, best of 3 "
                  "alternating; load average after: "
                  f"{report['layout_dm']['load_average'][0]:.1f}): "
                  + "; ".join(f"{data} " + ", ".join(f"{k} {v}" for k, v in row.items())
                              for data, row in report["layout_dm"]["seconds_per_iteration"].items())]
    for note in report.get("notes", []):
        lines += ["", note]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--cells", default="", help="comma list of cell names (default: all; none: rewrite the report)")
    p.add_argument("--scratch", default=str(ROOT / "runs" / "fast_by_default"))
    p.add_argument("--out", default=str(RESULTS / "fast_by_default.json"))
    p.add_argument("--plugin-cell", default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plugin_cell:
        plugin_cell(args)
        return
    import torch

    path, scratch = Path(args.out), Path(args.scratch)
    report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"cells": {}}
    flags = cpu_flags()
    auto = resolve_precision("auto", "cpu")
    command = "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    if args.cells != "none":
        report["commands"] = list(dict.fromkeys([*report.get("commands", []), command]))
    report.update(machine=device_description(torch.device("cpu")), versions=package_versions(),
                  cpu_flags=", ".join(f"{f} {'yes' if f in flags else 'no'}"
                                      for f in ("avx512_bf16", "amx_bf16", "amx_tile")),
                  auto_resolves_to=auto)
    order = ([(k, pr) for k in KINDS for pr in PRECISIONS] + [("plugin", "replay")]
             + [(k, pr) for k in SEED_KINDS for pr in ("float32", "bfloat16")])
    wanted = {c.strip() for c in args.cells.split(",") if c.strip()}
    if (not wanted or "layout" in wanted) and "layout" not in report:
        print("layout: images per second by layout and precision", flush=True)
        report["layout"] = {"images_per_second": layout_speed(), "load_average": os.getloadavg()}
        write_report(report, path)
    if (not wanted or "layout_dm" in wanted) and "layout_dm" not in report:
        print("layout_dm: DM seconds per iteration, contiguous against channels-last float32", flush=True)
        report["layout_dm"] = {"seconds_per_iteration": layout_dm(), "load_average": os.getloadavg()}
        write_report(report, path)
    for kind, precision in order:
        name = f"{kind}_{precision}"
        if (wanted and name not in wanted) or name in report["cells"]:
            continue
        if precision == "default" and f"{kind}_{auto}" in report["cells"]:
            report["cells"][name] = {**report["cells"][f"{kind}_{auto}"], "precision_asked": "default",
                                     "same_as": f"{kind}_{auto}"}
        else:
            print(f"{name}: running (load {os.getloadavg()[0]:.1f})", flush=True)
            report["cells"][name] = run_cell(kind, precision, args, scratch)
            print(f"{name}: {report['cells'][name]['wall_seconds']:.0f} s, accuracy "
                  f"{report['cells'][name].get('accuracy')}", flush=True)
        write_report(report, path)
    write_report(report, path)


if __name__ == "__main__":
    main()
