"""``fedcond evaluate``: the standard protocol on a synthetic set, all real data, or random subsets.

``--models a,b,c`` evaluates one synthetic set on several architectures (cross-architecture
table); ``--kd-temperature`` overrides the distillation temperature of soft labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

from fedcond.commands.common import (
    console,
    existing_folder,
    progress_bar,
    set_threads,
    user_errors,
    writable_file,
)
from fedcond.errors import FedcondError
from fedcond.precision import DEFAULT_PRECISION  # torch-free
from fedcond.synthetic import DEFAULT_MAX_BYTES

if TYPE_CHECKING:  # annotations only; the command imports these when it runs
    import torch

    from fedcond.data import ImageDataset
    from fedcond.evaluate import EvalConfig
    from fedcond.synthetic import SyntheticSet


@user_errors
def command(
    path: Optional[Path] = typer.Argument(None, help="a synthetic.safetensors file (omit with --full)"),
    dataset: str = typer.Option(..., "--dataset", "-d", help="the data set whose test split is used"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="read the data set from this local mirror"),
    model: Optional[str] = typer.Option(None, "--model", help="network trained from scratch (default convnet)"),
    models: Optional[str] = typer.Option(
        None,
        "--models",
        help="comma-separated networks for a cross-architecture table, e.g. convnet,mlp,lenet,alexnet,vgg11,resnet18",
    ),
    runs: int = typer.Option(5, "--runs", "-r", help="independently seeded trainings (mean ± std)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="training epochs (default 300; 30 with --full)"),
    dsa: bool = typer.Option(False, "--dsa", help="differentiable siamese augmentation while training"),
    dsa_strategy: str = typer.Option(
        "color_crop_cutout_flip_scale_rotate",
        "--dsa-strategy",
        help="DSA families joined by _, e.g. crop_scale_rotate for digits",
    ),
    kd_temperature: Optional[float] = typer.Option(
        None,
        "--kd-temperature",
        help="KD loss temperature for soft labels (default: the set's, written by fedcond relabel; else 1)",
    ),
    full: bool = typer.Option(False, "--full", help="train on all real training data (upper bound)"),
    random_ipc: Optional[int] = typer.Option(
        None, "--random-ipc", help="also (or only) evaluate random real subsets of this IPC"
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write the result as JSON here"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-bytes", help="refuse synthetic set files larger than this"),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for torch (default: torch's; 1 is fastest on a busy machine)"
    ),
    precision: str = typer.Option(
        DEFAULT_PRECISION, "--precision",
        help="training arithmetic: auto, float32 or bfloat16 (autocast); auto: bfloat16 where the device runs it fast",
    ),
) -> None:
    """Train fresh models on a synthetic set (or real data) and report test accuracy."""
    from fedcond.data import load_dataset, under_normalization
    from fedcond.evaluate import (
        EvalConfig,
        architecture_names,
        evaluate_full,
        evaluate_random,
        evaluate_synthetic,
    )
    from fedcond.runinfo import resolve_device, run_record, write_json
    from fedcond.synthetic import SyntheticSet

    set_threads(threads)
    if full and path is not None:
        raise FedcondError("give either a synthetic set PATH or --full, not both")
    if not full and path is None and random_ipc is None:
        raise FedcondError("nothing to evaluate: give a synthetic set PATH, --full, or --random-ipc K")
    if runs < 1:
        raise FedcondError(f"--runs must be >= 1, got {runs}")
    if epochs is not None and epochs < 1:
        raise FedcondError(f"--epochs must be >= 1, got {epochs}")
    if random_ipc is not None and random_ipc < 1:
        raise FedcondError(f"--random-ipc must be >= 1, got {random_ipc}")
    if json_out is not None:
        writable_file(json_out, "--json")
    existing_folder(data_dir)
    if models is not None:
        if model is not None:
            raise FedcondError("give either --model M or --models A,B,..., not both")
        if path is None or full or random_ipc is not None:
            raise FedcondError("--models evaluates a synthetic set PATH on several networks; drop --full/--random-ipc")
        arch = architecture_names(models.split(","))  # a bad name fails before any data is loaded
    sset = SyntheticSet.load(path, max_bytes=max_bytes) if path is not None else None  # fail fast on bad files
    config = EvalConfig(model=model or "convnet", epochs=epochs or (30 if full else 300), dsa=dsa,
                        dsa_strategy=dsa_strategy, kd_temperature=kd_temperature, precision=precision)
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir=data_dir, device=dev)
    if sset is not None:  # the set's normalisation (a DP set uses public constants)
        data = under_normalization(data, sset.mean, sset.std)
    if sset is not None and sset.dataset != data.name:
        console.print(f"[yellow]note:[/] the set was made from {sset.dataset!r}, evaluating on {data.name!r}")
    if kd_temperature is not None and (sset is None or not sset.soft_labels):
        console.print("[yellow]note:[/] --kd-temperature applies to soft labels only; this evaluation has hard labels")
    if models is not None:
        _cross_architecture(sset, data, arch, config, runs, seed, path, json_out, dev)
        return

    results = []
    with progress_bar("evaluate", total=runs) as update:
        on_run = lambda r, acc: update(r + 1, runs, acc=acc)
        if full:
            results.append(evaluate_full(data, config, runs, seed, on_run=on_run))
        if sset is not None:
            results.append(evaluate_synthetic(sset, data, config, runs, seed, on_run=on_run))
        if random_ipc is not None:
            results.append(evaluate_random(data, random_ipc, config, runs, seed, on_run=on_run))

    table = Table(title=f"{data.name} · {config.model} · {config.epochs} epochs · {runs} runs")
    for col in ("train set", "images", "accuracy (mean ± std)"):
        table.add_column(col)
    for res in results:
        name = {"full": "all real data", "random": f"random real, ipc {random_ipc}"}.get(res.kind, f"{path}")
        table.add_row(name, str(res.num_train_images), f"{100 * res.mean:.2f} ± {100 * res.std:.2f} %")
    Console().print(table)
    if json_out is not None:
        main = results[0].to_json()
        extra = {"baselines": [r.to_json() for r in results[1:]]} if len(results) > 1 else {}
        write_json(json_out, {**main, **extra, "path": str(path) if path else None, "dataset": data.name,
                              "seed": seed, "run": run_record(dev)})
        typer.echo(f"wrote {json_out}")


def _cross_architecture(sset: SyntheticSet, data: ImageDataset, arch: list[str], config: EvalConfig, runs: int,
                        seed: int, path: Path, json_out: Optional[Path], dev: torch.device) -> None:
    """``--models``: one table row per network; JSON = first network's usual fields + ``architectures``."""
    from fedcond.evaluate import evaluate_architectures
    from fedcond.runinfo import run_record, write_json

    total = runs * len(arch)
    with progress_bar("evaluate", total=total) as update:
        done = [0]

        def on_run(name: str, r: int, acc: float) -> None:
            done[0] += 1
            update(done[0], total, acc=acc)

        results = evaluate_architectures(sset, data, arch, config, runs, seed, on_run=on_run)
    table = Table(title=f"{data.name} · {path} · {config.epochs} epochs · {runs} runs")
    for col in ("architecture", "accuracy (mean ± std)"):
        table.add_column(col)
    for res in results:
        table.add_row(res.config.model, f"{100 * res.mean:.2f} ± {100 * res.std:.2f} %")
    Console().print(table)
    if json_out is not None:
        rows = [{"model": r.config.model, "accuracy_mean": r.mean, "accuracy_std": r.std, "accuracies": r.accuracies}
                for r in results]
        write_json(json_out, {**results[0].to_json(), "architectures": rows, "path": str(path), "dataset": data.name,
                              "seed": seed, "run": run_record(dev)})
        typer.echo(f"wrote {json_out}")
