"""Time to accuracy on the CPU (issue 13, item 3): the accuracy a DM set reaches after 5, 15 and
30 minutes of distillation, for fedcond's DM beside the authors' loop in the same time.

On a CPU the cost of one DM iteration is already near the ConvNet's forward-pass limit, so what
a user gains is accuracy per minute. Each *variant* (a set of DM options; ``default`` is the
paper's settings: batch_real 256, lr_images 1.0, momentum 0.5, real init, DSA) distills with
the clock running (set-up included, data loading not) and keeps the set at each budget.

The authors' loop (``reference_loops.reference_style_dm_seconds``: the same algorithm, written
the way their code is) is timed for a few iterations in the same run; in ``T`` minutes it would
run ``T / s`` iterations, so its accuracy at ``T`` is that of the paper-settings DM set after
that many iterations (kept by the ``default`` variant, which runs faster than the reference loop
and so passes those iterations before its own budgets). Every kept set is evaluated with the
standard protocol (``--runs`` ConvNets trained from scratch), beside random real images.

Results go to ``--out``/time_to_accuracy_<dataset>_ipc<k>.{json,md} after every step, with the
command, machine and versions; the kept sets lie beside them. Finished variants and evaluations
are read back when the command runs again (a variant cut short runs again from its start: a
clock cannot resume).

Budgets count wall time by default; ``--clock cpu --threads 1`` counts this process's CPU time
on one thread instead (the minutes of one core, unaffected by other work on the machine; the
authors' loop is then timed in CPU seconds too). Distillation checkpoints every
``--checkpoint-every`` iterations with the clock it had reached, so a killed run resumes.

CIFAR-10 (the quality-75 JPEG copy), IPC 10, the DM paper's evaluation (DSA, 1,000 epochs)::

    python benchmarks/time_to_accuracy.py --dataset cifar10 --data-dir /work/shared/data --ipc 10 \\
        --variants "default;batch_real=64" --budgets 15,60,120 --clock cpu --threads 1 \\
        --runs 3 --eval-epochs 1000 --eval-dsa

The MNIST CPU run (about 1 h 45 min of an idle 2-core machine for two variants)::

    python benchmarks/time_to_accuracy.py --dataset mnist --data-dir /work/shared/data \\
        --variants "default;batch_real=64" --budgets 5,15,30

``--minute`` sets how many seconds a budget's minute lasts (tests and dry runs: ``--minute 1``).
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedcond.data import load_dataset
from fedcond.distill.base import Callback, make_distiller
from fedcond.evaluate import EvalConfig, EvalResult, evaluate_random, evaluate_synthetic
from fedcond.runinfo import device_description, package_versions
from fedcond.synthetic import SyntheticSet

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/, also when loaded by a test
from reference_loops import reference_style_dm_seconds


class _Done(Exception):
    """Every budget of a variant has its set."""


class KeepAtBudgets(Callback):
    """Keeps the set at given clock seconds and at given iteration counts, then stops the run.

    The clock is wall time (``time.perf_counter``) or the process's CPU time (``time.process_time``;
    with one thread, the seconds of one core this run got, whatever else the machine runs). Every
    ``every`` iterations (the distiller's checkpoint interval) the elapsed clock and the kept sets
    are written to ``folder/progress.json``, so a killed run resumed from its checkpoint keeps
    counting from the clock it had reached instead of starting its budgets again.
    """

    def __init__(self, seconds: dict[str, float], iterations: dict[str, int], folder: Path,
                 clock: str = "wall", every: int = 0) -> None:
        self.folder, self.every = folder, every
        self.clock = time.process_time if clock == "cpu" else time.perf_counter
        progress = folder / "progress.json"
        saved = json.loads(progress.read_text()) if progress.exists() else {}
        self.kept: dict[str, dict[str, Any]] = saved.get("kept", {})
        self.elapsed_at: dict[str, float] = saved.get("elapsed_at", {})
        self.seconds = {k: v for k, v in seconds.items() if k not in self.kept}
        self.iterations = {k: v for k, v in iterations.items() if k not in self.kept}
        self.offset: float | None = None
        self.start = self.clock()

    def _save(self) -> None:
        tmp = self.folder / "progress.json.tmp"
        tmp.write_text(json.dumps({"kept": self.kept, "elapsed_at": self.elapsed_at}))
        tmp.replace(self.folder / "progress.json")

    def on_snapshot(self, iteration: int, synthetic_set: SyntheticSet) -> None:
        if self.offset is None:  # first iteration of this process: the run went on after iteration - 1
            before = [int(k) for k in self.elapsed_at if int(k) < iteration]
            self.offset = self.elapsed_at[str(max(before))] if before else 0.0
        elapsed = self.offset + self.clock() - self.start
        due = [k for k, s in self.seconds.items() if elapsed >= s]
        due += [k for k, n in self.iterations.items() if iteration >= n]
        for key in due:
            path = self.folder / f"{key}.safetensors"
            synthetic_set.save(path)
            self.kept[key] = {"iteration": iteration, "seconds": elapsed, "set": path.name}
            self.seconds.pop(key, None)
            self.iterations.pop(key, None)
        if due or (self.every and iteration % self.every == 0):
            self.elapsed_at[str(iteration)] = elapsed
            self._save()
        if not self.seconds and not self.iterations:
            raise _Done


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def budget_key(kind: str, minutes: float) -> str:
    """The name a kept set goes by: ``fedcond_5min`` (the variant's own clock) or ``reference_5min``
    (the iterations the authors' loop runs in those minutes)."""
    return f"{kind}_{minutes:g}min"


def parse_variants(text: str) -> dict[str, dict[str, Any]]:
    """``"default;batch_real=64,lr_images=2"`` -> {name: DM options}; values parsed as JSON where they can be."""
    out: dict[str, dict[str, Any]] = {}
    for name in (v.strip() for v in text.split(";")):
        if not name:
            continue
        options: dict[str, Any] = {}
        if name != "default":
            for pair in name.split(","):
                key, sep, value = pair.partition("=")
                if not sep:
                    raise SystemExit(f"variant {name!r}: expected key=value pairs, got {pair!r}")
                try:
                    options[key.strip()] = json.loads(value)
                except json.JSONDecodeError:
                    options[key.strip()] = value
        out[name] = options
    return out


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    budgets = report["budgets_minutes"]
    lines = [f"# Time to accuracy: DM on {report['dataset']}, IPC {report['ipc']}", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v), "",
             f"A budget's minute lasts {report['minute_seconds']:g} s of "
             + ("this process's CPU time" if report.get("clock") == "cpu" else "wall time")
             + (f" ({report['threads']} thread{'s' if report['threads'] > 1 else ''})" if report.get("threads") else "")
             + f". Accuracy: mean ± std over {report['runs']} ConvNets trained from scratch on the set "
             f"({report['eval_epochs']} epochs" + (", DSA augmentation" if report.get("eval_dsa") else "") + ").", ""]
    if report.get("dataset") == "cifar10":
        lines += ["Data: the quality-75 JPEG copy of CIFAR-10 (`shared/data/cifar10-jpeg.tar.gz`); accuracies run "
                  "a little below published CIFAR-10 figures: compare rows with each other.", ""]
    ref = report.get("reference_loop")
    if ref:
        lines += [f"Authors' loop (timed here): {ref['seconds_per_iteration']:.3f} s/iteration; "
                  f"CPU {ref['cpu_seconds_per_iteration']:.3f} s.", ""]
    rnd = report.get("random_real")
    if rnd:
        lines += [f"Random real images: {rnd['mean']:.4f} ± {rnd['std']:.4f}.", ""]
    lines += ["| run | " + " | ".join(f"{b:g} min" for b in budgets) + " |",
              "|---|" + "---:|" * len(budgets)]
    # the authors' loop's sets are kept by the paper-settings (default) variant's run
    rows = [("authors' loop (paper settings)", "default", "reference")] if "default" in report["variants"] else []
    rows += [(f"fedcond DM, {name}", name, "fedcond") for name in report["variants"]]
    for label, variant, kind in rows:
        kept = report["variants"].get(variant, {}).get("kept", {})
        cells = []
        for b in budgets:
            k = kept.get(budget_key(kind, b))
            if not k:
                cells.append("–")
            else:
                acc = k.get("accuracy")
                cells.append((f"{acc['mean']:.4f} ± {acc['std']:.4f}" if acc else "…") + f" ({k['iteration']} it)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", *cost_lines(report)]
    if plot_time_to_accuracy(path.with_suffix(".png"), report, rows):
        lines += ["", f"![accuracy against minutes of distillation]({path.with_suffix('.png').name})"]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def cost_lines(report: dict[str, Any]) -> list[str]:
    """Wall time and peak memory of each variant: its distillation's last invocation (earlier
    ones, e.g. shorter budgets before a larger --budgets, are not summed), its evaluations."""
    lines = []
    for name, entry in report["variants"].items():
        evals = sum(k["accuracy"].get("wall_seconds", 0.0) for k in entry.get("kept", {}).values() if "accuracy" in k)
        distill = entry.get("wall_seconds_last_process")
        parts = ([f"distillation {distill / 60:.0f} min wall (last invocation)"] if distill is not None else []) + \
                [f"evaluations {evals / 60:.0f} min wall"]
        if entry.get("peak_rss_mib"):
            parts.append(f"peak RSS {entry['peak_rss_mib'] / 1024:.1f} GiB")
        lines.append(f"- {name}: " + ", ".join(parts))
    rnd = report.get("random_real")
    if rnd and rnd.get("wall_seconds"):
        lines.append(f"- random real images: evaluations {rnd['wall_seconds'] / 60:.0f} min wall")
    return ["Wall time and memory:", "", *lines] if lines else []


def plot_time_to_accuracy(path: Path, report: dict[str, Any], rows: list[tuple[str, str, str]]) -> bool:
    """Accuracy (mean, std bars) against the budget's minutes, one line per run, random real as a line.

    Returns False (and draws nothing) while no kept set has been evaluated."""
    curves = []
    for label, variant, kind in rows:
        kept = report["variants"].get(variant, {}).get("kept", {})
        points = [(b, kept[budget_key(kind, b)]["accuracy"]) for b in report["budgets_minutes"]
                  if "accuracy" in kept.get(budget_key(kind, b), {})]
        if points:
            curves.append((label, points))
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, points in curves:
        ax.errorbar([b for b, _ in points], [a["mean"] for _, a in points], yerr=[a["std"] for _, a in points],
                    marker="o", capsize=3, label=label)
    rnd = report.get("random_real")
    if rnd:
        ax.axhline(rnd["mean"], color="grey", linestyle=":", label="random real images")
    ax.set_xlabel(f"distillation budget (minutes of {report['minute_seconds']:g} s)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"DM on {report['dataset']}, IPC {report['ipc']}: accuracy per minute of distillation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--variants", default="default;batch_real=64",
                   help="';'-separated DM option sets, each 'default' or k=v[,k=v]")
    p.add_argument("--budgets", default="5,15,30", help="minutes of distillation at which to keep the set")
    p.add_argument("--minute", type=float, default=60.0, help="seconds in a budget's minute (1 for a dry run)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--eval-epochs", type=int, default=300)
    p.add_argument("--reference-iterations", type=int, default=3, help="timed iterations of the authors' loop")
    p.add_argument("--eval-dsa", action="store_true",
                   help="train the evaluation ConvNets with DSA augmentation (the DM paper's CIFAR protocol)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what a budget's seconds count: wall time, or this process's CPU time (with --threads 1, "
                        "one core's seconds, unaffected by other work on the machine)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--checkpoint-every", type=int, default=25,
                   help="iterations between checkpoints: a killed run resumes there with the clock it had reached")
    p.add_argument("--tag", default="", help="suffix of the results file's name (runs split over processes)")
    p.add_argument("--no-random-real", action="store_true",
                   help="leave out the random-real row (another process's report has it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--scratch", type=Path, default=Path("runs/time_to_accuracy"), help="where the kept sets lie")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    budgets = [float(b) for b in args.budgets.split(",") if b]
    variants = parse_variants(args.variants)
    path = args.out / f"time_to_accuracy_{args.dataset}_ipc{args.ipc}{args.tag}.json"
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    report.update(dataset=args.dataset, ipc=args.ipc, budgets_minutes=budgets, minute_seconds=args.minute,
                  clock=args.clock, threads=torch.get_num_threads(), runs=args.runs, eval_epochs=args.eval_epochs,
                  eval_dsa=args.eval_dsa, machine=device_description(device), versions=package_versions(),
                  command=shlex.join(["python", *sys.argv]))
    report.setdefault("variants", {})
    dataset = load_dataset(args.dataset, data_dir=args.data_dir, device=device)
    eval_config = EvalConfig(epochs=args.eval_epochs, dsa=args.eval_dsa)

    def save() -> None:
        write_report(path, report)

    if "reference_loop" not in report:
        report["reference_loop"] = reference_style_dm_seconds(dataset, args.ipc, args.reference_iterations, device)
        save()
    ref_s = report["reference_loop"]["cpu_seconds_per_iteration" if args.clock == "cpu" else "seconds_per_iteration"]

    def folder_of(name: str) -> Path:
        return args.scratch / args.dataset / f"ipc{args.ipc}" / name.replace("=", "-").replace(",", "_")

    # Distil every variant first, then evaluate: the budgets' sets exist before the long evaluations start.
    for name, options in variants.items():
        entry = report["variants"].setdefault(name, {"options": options})
        seconds = {budget_key("fedcond", b): b * args.minute for b in budgets}
        # the authors' loop, in each budget, runs the paper-settings DM this many iterations (kept by "default")
        iterations = {budget_key("reference", b): max(1, int(b * args.minute / ref_s))
                      for b in budgets} if name == "default" else {}
        # Every budget's set kept: done; a larger budget later goes on from the checkpoint.
        if {*seconds, *iterations} <= set(entry.get("kept", {})):
            continue
        folder = folder_of(name)
        folder.mkdir(parents=True, exist_ok=True)
        keep = KeepAtBudgets(seconds, iterations, folder, args.clock, args.checkpoint_every)
        distiller, config = make_distiller(
            "dm", {**options, "eval_every": 1, "log_every": 10**9,
                   "checkpoint_dir": str(folder / "checkpoints"), "checkpoint_every": args.checkpoint_every},
            fixed={"ipc": args.ipc, "iterations": 10**9},
        )
        print(f"{name}: distilling for {max(budgets):g} min ({args.clock} clock)", flush=True)
        t0 = time.perf_counter()
        try:
            distiller.distill(dataset, config, torch.Generator().manual_seed(args.seed), device=device,
                              callbacks=[keep])
        except _Done:
            pass
        # Sets kept before (same iteration) keep their evaluation.
        done = {k: v["accuracy"] for k, v in entry.get("kept", {}).items()
                if "accuracy" in v and k in keep.kept and keep.kept[k]["iteration"] == v["iteration"]}
        kept = {k: {**v, "accuracy": done[k]} if k in done else v for k, v in keep.kept.items()}
        entry.update(kept=kept, peak_rss_mib=peak_rss_mib(),
                     wall_seconds_last_process=time.perf_counter() - t0)
        save()

    def evaluated(result: dict[str, Any] | None) -> bool:  # with as many runs as asked (--runs 3 adds a run)
        return result is not None and len(result["accuracies"]) >= args.runs

    def more_runs(result: dict[str, Any] | None, evaluate: Callable[[int, int], EvalResult]) -> dict[str, Any]:
        """``result`` with the runs it lacks added: run r trains with seed + r, so the runs
        already there are the first ones of a fresh evaluation with --runs."""
        have = list(result["accuracies"]) if result else []
        t0 = time.perf_counter()
        accuracies = have + evaluate(args.runs - len(have), args.seed + len(have)).accuracies
        seconds = (result or {}).get("wall_seconds", 0.0) + time.perf_counter() - t0
        return {"mean": statistics.fmean(accuracies), "std": statistics.pstdev(accuracies),
                "accuracies": accuracies, "wall_seconds": seconds}

    if not evaluated(report.get("random_real")) and not args.no_random_real:
        report["random_real"] = more_runs(report.get("random_real"), lambda runs, seed: evaluate_random(
            dataset, args.ipc, eval_config, runs=runs, seed=seed))
        save()
    for name in variants:
        entry = report["variants"][name]
        for key, kept in sorted(entry["kept"].items()):
            if evaluated(kept.get("accuracy")):
                continue
            sset = SyntheticSet.load(folder_of(name) / kept["set"])
            kept["accuracy"] = r = more_runs(kept.get("accuracy"), lambda runs, seed, s=sset: evaluate_synthetic(
                s, dataset, eval_config, runs=runs, seed=seed))
            print(f"{name} {key}: {r['mean']:.4f} ± {r['std']:.4f} after {kept['iteration']} iterations", flush=True)
            save()
    report["peak_rss_mib"] = peak_rss_mib()
    save()
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
