"""``fedcond continual``: compare continual-learning strategies on a split benchmark.

Avalanche and the strategies are imported only when the command runs, so ``fedcond
--help`` and the core never need Avalanche.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any, Optional

import typer

from fedcond.commands.common import (
    console,
    existing_file,
    existing_folder,
    parse_options,
    progress_bar,
    user_errors,
    writable_folder,
)
from fedcond.errors import FedcondError

_BENCH_KEYS = {"benchmark", "data_dir", "task_incremental", "train_fraction", "device", "seed", "validation",
               "evaluate_on"}


@user_errors
def command(
    benchmark: Optional[str] = typer.Option(
        None,
        "--benchmark",
        "-b",
        help="split-digits (offline, default), split-mnist, split-fashion-mnist, split-cifar10",
    ),
    out: Path = typer.Option(..., "--out", help="output folder (results.json, accuracy_matrix.png, logs/)"),
    strategies: Optional[str] = typer.Option(
        None,
        "--strategies",
        "-s",
        help="comma list of naive, replay, gdumb, icarl, der, der++, joint, and the plugin's memories "
        "distilled-replay, distilled-finetune, distilled-mix with their controls random-* and herding-* (same "
        "plugin, mode and formation: random-finetune, herding-finetune, ...)",
    ),
    mem_size: Optional[str] = typer.Option(
        None, "--mem-size", "-M", help="memory in images; a comma list runs each size and plots accuracy vs memory"
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="local mirror for mnist / fashion-mnist / cifar10"
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of every random draw (default 0)"),
    seeds: Optional[str] = typer.Option(
        None, "--seeds", help="comma list of seeds (repeats every run); overrides --seed"
    ),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", help="training epochs per experience, all strategies (default: 5 on split-digits, else 1)"
    ),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="SGD learning rate, all strategies (default: 0.003 on split-digits, else 0.01)"
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="training mini-batch size"),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="distillation method of distilled-replay (dm, dc, dsa, herding, random, ...)"
    ),
    ipc: Optional[int] = typer.Option(
        None, "--ipc", help="images distilled per new class (default: its share of the memory)"
    ),
    iterations: Optional[int] = typer.Option(
        None, "--iterations", "-n", help="distillation iterations (iterative methods)"
    ),
    rebalance: Optional[str] = typer.Option(
        None,
        "--rebalance",
        help="distilled strategies: how old classes shrink when new ones arrive: nested (default), subselect or "
             "redistill",
    ),
    buffer_epochs: Optional[int] = typer.Option(
        None,
        "--buffer-epochs",
        help="epochs of training on the memory after each experience (gdumb, distilled-replay, distilled-finetune; "
             "default 300)",
    ),
    buffer_lr: Optional[float] = typer.Option(
        None, "--buffer-lr", help="SGD learning rate of that training (default 0.01)"
    ),
    augment: Optional[str] = typer.Option(
        None, "--augment", help="the recipe's augmentation, on every strategy's training batches and memory training: "
                                "auto (default: DSA crop_scale_rotate on one channel, DSA's colour set otherwise), "
                                "none, or DSA families such as crop_flip"
    ),
    unequal_recipe: bool = typer.Option(
        False, "--unequal-recipe", help="allow strategies with different recipes (a per-strategy override of "
                                        "augment/momentum/weight_decay in a config); reports then say so first"
    ),
    validation: Optional[float] = typer.Option(
        None, "--validation", help="share of each experience's training images held out for validation (default 0.1)"
    ),
    evaluate_on: Optional[str] = typer.Option(
        None, "--evaluate-on", help="test (default) or validation: score on the held-out share, the test images "
                                    "unread (every tuning choice)"
    ),
    model: Optional[str] = typer.Option(
        None, "--model", help="network of every strategy and of distillation (default: convnet)"
    ),
    task_incremental: bool = typer.Option(False, "--task-incremental", help="one task label per experience"),
    train_fraction: Optional[float] = typer.Option(
        None, "--train-fraction", help="keep this fraction of each class's training images (smaller CPU runs)"
    ),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with any of these settings (flags win)"),
    option: Optional[list[str]] = typer.Option(
        None, "--option", "-o", help="distillation option key=value (repeatable)"
    ),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda"),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="arithmetic of every strategy's training and of distillation: auto (default: "
                                  "bfloat16 where the device runs it fast), float32 or bfloat16"
    ),
    threads: Optional[int] = typer.Option(
        None,
        "--threads",
        help="CPU threads for torch (default on the CPU: 1, fastest for these small models; measured 10x faster than 2 "
             "on a busy 2-core machine)",
    ),
) -> None:
    """Continual learning with a distilled replay buffer, compared with Avalanche's baselines."""
    writable_folder(out)
    existing_folder(data_dir)
    existing_file(config, "--config")
    values = _load_toml(config) if config else {}
    flags = {
        "benchmark": benchmark,
        "data_dir": str(data_dir) if data_dir else None,
        "seed": seed,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "method": method,
        "ipc": ipc,
        "iterations": iterations,
        "rebalance": rebalance,
        "buffer_epochs": buffer_epochs,
        "buffer_lr": buffer_lr,
        "validation": validation,
        "evaluate_on": evaluate_on,
        "model": model,
        "train_fraction": train_fraction,
        "device": device,
        "precision": precision,
        "strategies": _list(strategies, str, "--strategies"),
        "mem_sizes": _list(mem_size, int, "--mem-size"),
        "seeds": _list(seeds, int, "--seeds"),
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if task_incremental:
        values["task_incremental"] = True
    if unequal_recipe:
        values["unequal_recipe"] = True
    recipe = dict(values.get("recipe", {}))  # a [continual.recipe] table; the flag wins
    if "augment" in values or augment is not None:
        recipe["augment"] = augment if augment is not None else values.pop("augment")
    values.pop("augment", None)
    if recipe:
        values["recipe"] = recipe
    if option:
        values["distill_options"] = {**values.get("distill_options", {}), **parse_options(option)}
    if threads is not None and threads < 1:
        raise FedcondError(f"--threads must be >= 1, got {threads}")
    values["threads"] = threads
    _run(values, out)


def _run(values: dict[str, Any], out: Path) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # Avalanche's own 0.7 notices
    from fedcond.continual.benchmarks import benchmark_defaults, make_benchmark
    from fedcond.continual.report import write_report
    from fedcond.continual.runner import ContinualConfig, plan, run_comparison
    from fedcond.runinfo import resolve_device, run_record

    bench_args = {k: values.pop(k) for k in list(values) if k in _BENCH_KEYS}
    threads = values.pop("threads", None)
    seed = int(bench_args.get("seed", 0))
    values.setdefault("seeds", [seed])
    for key, value in benchmark_defaults(bench_args.get("benchmark", "split-digits")).items():
        values.setdefault(key, value)
    try:
        cfg = ContinualConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except TypeError as err:
        raise FedcondError(f"unknown continual setting: {err}") from None
    if any(s.startswith("distilled") for s in cfg.strategies):
        from fedcond.continual.buffer import DistillSpec

        # An unknown method or method option fails now, before the data loads and the baselines.
        DistillSpec(method=cfg.method, ipc=cfg.ipc, iterations=cfg.iterations, model=cfg.model,
                    options=cfg.distill_options, rebalance=cfg.rebalance)
    dev = resolve_device(bench_args.get("device", "auto"))
    if threads is not None or dev.type == "cpu":
        import torch

        torch.set_num_threads(threads or 1)
    bench = make_benchmark(bench_args.get("benchmark", "split-digits"), data_dir=bench_args.get("data_dir"),
                           task_incremental=bool(bench_args.get("task_incremental", False)),
                           train_fraction=float(bench_args.get("train_fraction", 1.0)), seed=seed,
                           validation=float(bench_args.get("validation", 0.1)),
                           evaluate_on=str(bench_args.get("evaluate_on", "test")))
    for line in cfg.recipe_warnings:
        console.print(f"[bold red]{line}[/]")
    total = len(plan(cfg))
    console.print(
        f"[bold]continual[/] {bench.name}: {bench.n_experiences} experiences, {total} runs "
        f"({', '.join(cfg.strategies)}; memory {', '.join(map(str, cfg.mem_sizes))}; seeds {list(cfg.seeds)}), device "
        f"{dev}"
    )
    start = time.perf_counter()
    steps = bench.n_experiences  # the bar moves per experience: a distilled run can take many minutes
    with progress_bar("continual", total=total * steps) as update:
        finished = [0]

        def on_experience(tag: str, i: int) -> None:
            update(finished[0] * steps + i + 1, total * steps, run=tag, experience=f"{i + 1}/{steps}")

        def on_run(done: int, n: int, entry: dict[str, Any]) -> None:
            finished[0] = done
            update(done * steps, n * steps)
            console.print(f"  {entry['strategy']:<17} mem {entry['mem_size']:>4} seed {entry['seed']}: "
                          f"final avg acc {entry['final_average_accuracy']:.3f}  forgetting {entry['forgetting']:.3f}"
                          f"  ({entry['wall_time_s']:.0f} s)")

        runs = run_comparison(bench, cfg, out, dev, on_run, on_experience)
    record = run_record(dev, benchmark=bench.name, task_incremental=bench.task_incremental,
                        train_images=int(bench.data.train_images.shape[0]), config=_jsonable(cfg),
                        evaluated_on=bench.evaluated_on, validation=bench.validation,
                        wall_time_s=time.perf_counter() - start)
    paths = write_report(runs, out, record, recipe_warnings=cfg.recipe_warnings)
    _print_table(runs, cfg.recipe_warnings)
    typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}")


def _print_table(runs: list[dict[str, Any]], warnings: list[str]) -> None:
    from fedcond.continual.report import report_lines

    for line in report_lines(runs, warnings):
        typer.echo(line)


def _list(text: str | None, kind: type, flag: str) -> list[Any] | None:
    if text is None:
        return None
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FedcondError(f"{flag} expects a comma list of {kind.__name__}s, got {text!r}") from None


def _load_toml(path: Path) -> dict[str, Any]:
    """Settings from a TOML file: top-level keys, or a ``[continual]`` table."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise FedcondError(f"cannot read config {path}: {err}") from None
    return dict(data.get("continual", data))


def _jsonable(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)
