"""A user's own Avalanche script: Avalanche's SplitMNIST and SimpleMLP, with the plugin added.

Nothing fedcond-specific but the plugin's arguments: Avalanche's benchmark (its own MNIST
loader and transforms), Avalanche's model, Avalanche's ``Naive`` strategy and metrics.
Compared at equal memory with Avalanche's own ``ReplayPlugin`` and with the plugin's own
control, the same plugin holding random real images (``method="random"``), all timed in the
same run (wall and CPU seconds of the whole script: training, the plugin's work, evaluation).
One recipe (``--augment``, :class:`fedcond.recipe.Recipe`) trains every cell: SGD with its
momentum and weight decay, its augmentation on every training batch of Naive (a
``BatchAugmentation`` plugin beside the replay plugin) and in the plugin's memory training::

    python benchmarks/continual_avalanche_user.py --data-dir /work/shared/data --mem-size 20 --seeds 0,1,2

writes benchmarks/results/continual_avalanche_user.{json,md}: ``DistilledReplayPlugin(mem_size=20)``
with its default arguments (DM), the same plugin with ``method="random"`` and
``ReplayPlugin(mem_size=20)``; gains are per-seed paired differences with 95 % intervals. With ``--variants`` it
draws the plugin's accuracy against its seconds instead (the cost sweep that chose the
defaults), into continual_plugin_cost.{json,md,png}::

    python benchmarks/continual_avalanche_user.py --data-dir /work/shared/data --mem-size 20 --seeds 0 \\
        --variants "default;iterations=100,batch_real=256;method=random;precision=bfloat16"

A variant is ``key=value`` pairs joined by commas (``default``: no arguments), keys
``iterations``, ``batch_real``, ``precision``, ``model``, ``method``, ``rebalance``,
``buffer_epochs``, ``lr_images``. Resumable: finished (variant, memory, seed) cells are kept, and every
cell is saved as it finishes. ``--data-dir`` holds ``MNIST/raw/*.gz`` (the shared mirror);
they are unpacked once into a cache folder torchvision reads without downloading.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

from avalanche.benchmarks.classic import SplitMNIST
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.models import SimpleMLP
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.supervised import Naive

from fedcond.continual.buffer import DistillSpec
from fedcond.continual.buffer_training import BufferTraining
from fedcond.continual.plugin import DistilledReplayPlugin
from fedcond.continual.strategies import BatchAugmentation
from fedcond.recipe import Recipe
from fedcond.runinfo import run_record
from fedcond.stats import paired_gain, spread

RESULTS = Path(__file__).parent / "results"
VARIANT_KEYS = ("iterations", "batch_real", "precision", "model", "method", "rebalance", "buffer_epochs", "lr_images")


def mnist_root(data_dir: Path, cache: Path) -> Path:
    """A folder with MNIST/raw/ unpacked, as torchvision's MNIST(download=False) expects."""
    raw = cache / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in (data_dir / "MNIST" / "raw").glob("*.gz"):
        target = raw / gz.name[:-3]
        if not target.exists():
            with gzip.open(gz) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return cache


def parse_variant(text: str) -> dict[str, Any]:
    """``"iterations=20,batch_real=64"`` -> {"iterations": 20, "batch_real": 64}; ``default`` -> {}."""
    text = text.strip()
    if text in ("", "default"):
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in VARIANT_KEYS:
            raise SystemExit(f"error: unknown variant key {key!r}; use {', '.join(VARIANT_KEYS)}")
        try:
            out[key] = int(value) if value.isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


PLUGINS = ("replay", "distilled-replay", "random-replay")  # the user-script comparison's cells


def make_plugin(variant: dict[str, Any], mem: int, seed: int, recipe: Recipe | None = None) -> DistilledReplayPlugin:
    """The plugin with the variant's arguments (only those given; the rest are its defaults):
    its distillation's in the buffer's spec; with a ``recipe``, its memory training is the
    recipe's (MNIST: one channel)."""
    spec = {k: variant[k] for k in ("iterations", "batch_real", "precision", "model", "method", "rebalance")
            if k in variant}
    if "lr_images" in variant:
        spec["options"] = {"lr_images": variant["lr_images"]}
    kwargs: dict[str, Any] = {"spec": DistillSpec(seed=seed, **spec)}
    epochs = int(variant.get("buffer_epochs", 300))
    if recipe is not None:
        kwargs["buffer_training"] = BufferTraining.from_recipe(recipe, 1, epochs=epochs)
    elif "buffer_epochs" in variant:
        kwargs["buffer_training"] = BufferTraining(epochs=epochs)
    return DistilledReplayPlugin(mem_size=mem, seed=seed, **kwargs)


def run(plugin_name: str, mem: int, seed: int, root: Path, epochs: int, lr: float,
        variant: dict[str, Any] | None = None, recipe: Recipe | None = None) -> dict:
    """Train SimpleMLP on SplitMNIST with one plugin; final average accuracy over experiences.
    With a ``recipe``: SGD with its momentum and weight decay and its augmentation on every
    training batch, whichever the plugin (the fair path); without: the user's plain script."""
    torch.manual_seed(seed)
    bench = SplitMNIST(n_experiences=5, seed=seed, dataset_root=str(root))
    model = SimpleMLP(num_classes=10)
    if plugin_name == "random-replay":  # the plugin's control: random real images, same mode and budget
        variant = {**(variant or {}), "method": "random"}
    plugin = (make_plugin(variant or {}, mem, seed, recipe) if plugin_name != "replay"
              else ReplayPlugin(mem_size=mem))
    plugins: list[Any] = [plugin]
    momentum, weight_decay = (0.9, 0.0) if recipe is None else (recipe.momentum, recipe.weight_decay)
    augment = recipe.augment_strategy(1) if recipe is not None else None
    if augment is not None:
        plugins.append(BatchAugmentation(augment, seed=seed + 2))
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    strategy = Naive(model=model, optimizer=optimizer, train_mb_size=32, train_epochs=epochs, plugins=plugins,
                     evaluator=evaluator)
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True):  # Avalanche's own deprecation notices
        for exp in bench.train_stream:
            strategy.train(exp)
        metrics = strategy.eval(bench.test_stream)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    accs = [float(v) for k, v in metrics.items() if k.startswith("Top1_Acc_Exp/eval_phase/test_stream")]
    out = {"plugin": plugin_name, "mem_size": mem, "seed": seed, "final_average_accuracy": statistics.fmean(accs),
           "experience_accuracies": accs, "wall_time_s": wall, "cpu_time_s": cpu}
    if plugin_name != "replay":
        out["distill_seconds"] = sum(plugin.storage_policy.distill_seconds)
        out["settings"] = plugin.settings()
    if recipe is not None:
        out["recipe"] = recipe.to_json()
    return out


def _record(args: argparse.Namespace) -> dict:
    return run_record(torch.device("cpu"), args={k: str(v) for k, v in vars(args).items()},
                      cpu_flags=_bf16_flags())


def _bf16_flags() -> str:
    from fedcond.precision import cpu_flags

    flags = cpu_flags()
    return ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx512_bf16", "amx_bf16", "amx_tile"))


def user_script(args: argparse.Namespace, root: Path) -> None:
    """Replay beside the plugin with its defaults and its random-real control, per seed (the
    README's comparison), all with one recipe."""
    path = RESULTS / "continual_avalanche_user.json"
    saved = json.loads(path.read_text()) if path.exists() else {"runs": []}
    recipe = Recipe(augment=args.augment)
    # cells of another recipe (or of the script before it had one) are not this comparison's
    saved["runs"] = [r for r in saved["runs"] if r.get("recipe") == recipe.to_json()]
    for _ in range(args.repeat):  # replay and the plugin alternate, so both see the same load
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in PLUGINS:
                cell = next((r for r in saved["runs"] if (r["plugin"], r["mem_size"], r["seed"])
                             == (name, args.mem_size, seed)), None)
                if cell is not None and len(cell.get("repeats", [cell])) >= args.repeat:
                    continue
                result = run(name, args.mem_size, seed, root, args.epochs, args.lr, recipe=recipe)
                if cell is None:
                    cell = {**result, "repeats": []}
                    saved["runs"].append(cell)
                cell.setdefault("repeats", [{"wall_time_s": cell["wall_time_s"], "cpu_time_s": cell["cpu_time_s"]}])
                cell["repeats"].append({"wall_time_s": result["wall_time_s"], "cpu_time_s": result["cpu_time_s"]})
                # the least disturbed run of a shared machine: the fastest of the repeats
                cell["wall_time_s"] = min(r["wall_time_s"] for r in cell["repeats"])
                cell["cpu_time_s"] = min(r["cpu_time_s"] for r in cell["repeats"])
                print(cell, flush=True)
                path.write_text(json.dumps({**saved, **_record(args)}, indent=1) + "\n")
    saved = json.loads(path.read_text())
    lines = [
        "# A user's Avalanche script: SplitMNIST + SimpleMLP + Naive, plugin added",
        "",
        f"Command: `{saved.get('command', '')}`",
        "",
        f"Device: {saved.get('device_name', '')}; CPU flags: {saved.get('cpu_flags', '')}; versions "
        f"{saved.get('versions', '')}",
        "",
        "`DistilledReplayPlugin(mem_size=M)` with its default arguments (distilled-replay: DM), the same plugin "
        "with `method=\"random\"` (random-replay: random real images, same mode and budget) and Avalanche's "
        "`ReplayPlugin(mem_size=M)`, every cell trained with one recipe: "
        f"{Recipe(augment=args.augment).describe(1)} (Naive's SGD, a batch augmentation plugin on every training "
        "batch, and the plugin's memory training). Seconds are the whole script (training, the plugin's work, "
        "evaluation), timed in this run, one thread; with repeats, the fastest repeat of each (the machine is "
        "shared), all repeats in the JSON. Accuracy: mean ± sample std (95 % t interval, n seeds).",
        "",
        "| plugin | memory | seeds | final avg acc | wall s (per seed) | CPU s (per seed) |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for r in saved["runs"]:
        groups.setdefault((r["plugin"], r["mem_size"]), []).append(r)
    for (name, mem), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        acc = spread([r["final_average_accuracy"] for r in rs]).format()
        walls = " / ".join(f"{r['wall_time_s']:.0f}" for r in rs)
        cpus = " / ".join(f"{r['cpu_time_s']:.0f}" for r in rs if "cpu_time_s" in r)
        lines.append(f"| {name} | {mem} | {len(rs)} | {acc} | {walls} | {cpus} |")
    by_seed = {(r["plugin"], r["seed"]): r for r in saved["runs"] if r["mem_size"] == args.mem_size}
    lines += ["", "| gain (paired over seeds) | final avg acc, points | x wall (per seed) | x CPU (per seed) |",
              "|---|---|---|---|"]
    for treated, control in (("distilled-replay", "replay"), ("distilled-replay", "random-replay"),
                             ("random-replay", "replay")):
        seeds = sorted(s for (p, s) in by_seed if p == treated and (control, s) in by_seed)
        if not seeds:
            continue
        mine, theirs = [by_seed[treated, s] for s in seeds], [by_seed[control, s] for s in seeds]
        gain = paired_gain([r["final_average_accuracy"] for r in mine], [r["final_average_accuracy"] for r in theirs])
        walls = " / ".join(f"{a['wall_time_s'] / b['wall_time_s']:.1f}" for a, b in zip(mine, theirs))
        cpus = " / ".join(f"{a['cpu_time_s'] / b['cpu_time_s']:.1f}" for a, b in zip(mine, theirs))
        lines.append(f"| {treated} over {control} | {gain.format(scale=100, spec='.1f')} | {walls} | {cpus} |")
    settings = next((r["settings"] for r in saved["runs"] if r["plugin"] == "distilled-replay"), None)
    if settings:
        lines += ["", f"The plugin's defaults, as they ran: `{json.dumps(settings, sort_keys=True)}`"]
    for note in saved.get("notes", []):
        lines += ["", note]
    (RESULTS / "continual_avalanche_user.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def sweep(args: argparse.Namespace, root: Path) -> None:
    """The plugin's accuracy against its seconds for each variant, beside replay (same run)."""
    path = RESULTS / "continual_plugin_cost.json"
    saved = json.loads(path.read_text()) if path.exists() else {"runs": []}
    variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    cells = [("replay", "")] + [("distilled-replay", v) for v in variants]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, variant in cells:
            key = (name, variant, args.mem_size, seed)
            if any((r["plugin"], r.get("variant", ""), r["mem_size"], r["seed"]) == key for r in saved["runs"]):
                continue
            result = run(name, args.mem_size, seed, root, args.epochs, args.lr, parse_variant(variant))
            saved["runs"].append({**result, "variant": variant})
            print(saved["runs"][-1], flush=True)
            record = _record(args)
            commands = list(dict.fromkeys([*saved.get("commands", []), record["command"]]))
            path.write_text(json.dumps({**saved, **record, "commands": commands}, indent=1) + "\n")
    saved = json.loads(path.read_text())
    report_sweep(saved)


def default_variant() -> str:
    """The plugin's defaults written as a variant (the sweep's cell of that name is the default)."""
    from fedcond.continual.buffer import BUFFER_DM_DEFAULTS

    return ",".join(f"{k}={v:g}" for k, v in BUFFER_DM_DEFAULTS.items())


def _groups(saved: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    default = default_variant()
    for r in saved["runs"]:
        name = "replay" if r["plugin"] == "replay" else (r.get("variant") or default)
        groups.setdefault(f"default ({default})" if name == default else name, []).append(r)
    return groups


def report_sweep(saved: dict) -> None:
    """continual_plugin_cost.md and .png: accuracy against seconds, replay's as the reference."""
    groups = _groups(saved)
    replay = groups.get("replay", [])
    replay_cpu = statistics.fmean(r["cpu_time_s"] for r in replay) if replay else float("nan")
    lines = [
        "# The plugin's cost: accuracy against seconds on a user's Avalanche script",
        "",
        "Commands (each resumes the same file; finished cells are kept): "
        + ", ".join(f"`{c}`" for c in saved.get("commands", [saved.get("command", "")])),
        "",
        f"Device: {saved.get('device_name', '')}; CPU flags: {saved.get('cpu_flags', '')}; versions "
        f"{saved.get('versions', '')}",
        "",
        "SplitMNIST (5 experiences), Avalanche's SimpleMLP, `Naive(train_epochs=1)`, memory "
        f"{replay[0]['mem_size'] if replay else ''}. Seconds: the whole script (one thread); x replay: CPU seconds "
        "over ReplayPlugin's in the same run (the machine is shared, so CPU seconds are steadier than wall).",
        "",
        "| variant | seeds | final avg acc | wall s | CPU s | x replay (CPU) | distill s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rs in sorted(groups.items(), key=lambda kv: statistics.fmean(r["cpu_time_s"] for r in kv[1])):
        acc = statistics.fmean(r["final_average_accuracy"] for r in rs)
        cpu = statistics.fmean(r["cpu_time_s"] for r in rs)
        wall = statistics.fmean(r["wall_time_s"] for r in rs)
        distill = statistics.fmean(r.get("distill_seconds", 0.0) for r in rs)
        lines.append(f"| {name} | {','.join(str(r['seed']) for r in rs)} | {acc:.3f} | {wall:.0f} | {cpu:.0f} | "
                     f"{cpu / replay_cpu:.1f} | {distill:.0f} |")
    for note in saved.get("notes", []):
        lines += ["", note]
    (RESULTS / "continual_plugin_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot_sweep(groups, replay_cpu, RESULTS / "continual_plugin_cost.png")


def _short(name: str) -> str:
    """A compact plot label: ``it40 b16 lr3 bf16``."""
    for long, short in (("iterations=", "it"), ("batch_real=", "b"), ("lr_images=", "lr"),
                        ("precision=bfloat16", "bf16"), ("buffer_epochs=", "epochs "), ("rebalance=", ""),
                        ("model=", ""), ("method=", ""),
                        ("default (", "default: "), (")", ""), (",", " ")):
        name = name.replace(long, short)
    return name


def plot_sweep(groups: dict[str, list[dict]], replay_cpu: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = {"1": "0.6", "3": "C0", "5": "C2", "10": "C1"}
    points = []
    for name, rs in groups.items():
        x = statistics.fmean(r["cpu_time_s"] for r in rs)
        y = statistics.fmean(r["final_average_accuracy"] for r in rs)
        points.append((x, y))
        lr = next((part.split("=")[1] for part in name.replace("(", ",").replace(")", ",").split(",")
                   if part.startswith("lr_images=")), None)
        colour = "C3" if name == "replay" else colours.get(lr or "", "0.3")
        marker = "s" if name == "replay" else ("*" if name.startswith("default") else "o")
        ax.scatter([x], [y], marker=marker, s=160 if marker == "*" else 30, color=colour, zorder=3)
        ax.annotate(_short(name), (x, y), fontsize=6.5, xytext=(4, 2), textcoords="offset points")
    front, best = [], -1.0
    for x, y in sorted(points):
        if y > best:
            front.append((x, y))
            best = y
    ax.plot(*zip(*front), color="0.8", linewidth=1, zorder=1)
    if replay_cpu == replay_cpu:
        ax.axvline(3 * replay_cpu, color="C3", linestyle="--", linewidth=1, label="3 x ReplayPlugin's seconds")
    for lr, colour in colours.items():
        ax.scatter([], [], color=colour, s=30, label=f"DM lr_images {lr}")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("CPU seconds of the whole script, mean over seeds (log)")
    ax.set_ylabel("final average accuracy")
    ax.set_title("DistilledReplayPlugin on SplitMNIST + SimpleMLP + Naive, memory 20 (it: DM iterations, "
                 "b: real images per class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=Path("runs/avalanche_mnist"))
    p.add_argument("--mem-size", type=int, default=20)
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default=None, help="semicolon list of plugin variants: the cost sweep")
    p.add_argument("--repeat", type=int, default=1, help="user script: time every cell this many times (fastest kept)")
    p.add_argument("--augment", default="auto",
                   help="user script: the recipe's augmentation for every cell (auto: DSA crop_scale_rotate on MNIST; "
                   "none)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = mnist_root(args.data_dir, args.cache)
    if args.variants is not None:
        sweep(args, root)
    else:
        user_script(args, root)


if __name__ == "__main__":
    main()
