"""``fedcond experts``: train and store expert trajectories for trajectory matching (MTT)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from fedcond.commands.common import (
    console,
    existing_folder,
    parse_options,
    progress_bar,
    set_threads,
    user_errors,
    writable_folder,
)


@user_errors
def command(
    dataset: str = typer.Option(..., "--dataset", "-d", help="data set the experts train on (as for distill)"),
    out: Path = typer.Option(..., "--out", help="folder of expert trajectories (re-running resumes / adds experts)"),
    num_experts: int = typer.Option(5, "--num-experts", help="number of experts"),
    epochs: int = typer.Option(15, "--epochs", help="training epochs per expert (one stored point per epoch)"),
    model: str = typer.Option("convnet", "--model", help="expert (and student) network"),
    lr: float = typer.Option(0.01, "--lr", help="expert SGD learning rate"),
    dsa: bool = typer.Option(True, "--dsa/--no-dsa", help="train experts with DSA augmentation (as MTT does)"),
    dsa_strategy: Optional[str] = typer.Option(
        None, "--dsa-strategy", help="DSA families joined by _ (default: DSA's)"
    ),
    zca: bool = typer.Option(False, "--zca", help="train in ZCA-whitened space (distill with -o zca=true then)"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="further expert option key=value"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="read the data set from this local mirror"),
    seed: int = typer.Option(0, "--seed", help="expert i uses seed + i"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch"),
) -> None:
    """Train expert trajectories on real data for 'fedcond distill --method mtt -o experts_dir=OUT'."""
    from fedcond.data import load_dataset
    from fedcond.distill.experts import ExpertConfig, ensure_experts, expert_accuracies
    from fedcond.runinfo import peak_memory_bytes, resolve_device, run_record, write_json
    from fedcond.zca import zca_dataset

    set_threads(threads)
    writable_folder(out)
    existing_folder(data_dir)
    values = {"model": model, "num_experts": num_experts, "epochs": epochs, "lr": lr, "dsa": dsa, "zca": zca,
              "seed": seed, **parse_options(option)}
    if dsa_strategy is not None:
        values["dsa_strategy"] = dsa_strategy
    config = ExpertConfig.from_dict(values)
    dev = resolve_device(device)
    data = load_dataset(dataset, data_dir=data_dir, device=dev)
    if config.zca:
        data = zca_dataset(data, config.zca_regularization)
    console.print(f"[bold]experts[/] on {data.name}: {config.num_experts} x {config.epochs} epochs of {config.model}, "
                  f"device {dev}")
    start = time.perf_counter()
    with progress_bar("train experts") as update:
        ensure_experts(data, config, out, on_epoch=lambda done, total: update(done, total))
    wall = time.perf_counter() - start
    accs = expert_accuracies(out)
    write_json(out / "run.json", run_record(dev, dataset=data.name, config=config.identity(),
                                            num_experts=config.num_experts, wall_time_s=wall,
                                            peak_memory_bytes=peak_memory_bytes(dev), expert_test_accuracies=accs))
    mean = sum(accs) / len(accs) if accs else float("nan")
    typer.echo(f"{len(accs)} experts in {out} (mean test accuracy {100 * mean:.2f} %), {wall:.1f} s")
