"""``fedcond federate``: compare FedCond with FedAvg/FedProx in a local Flower simulation."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedcond.commands.common import console, parse_options, user_errors
from fedcond.errors import FedcondError


@user_errors
def command(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="digits, mnist, cifar10, ... (default digits)"),
    out: Path = typer.Option(..., "--out", help="output folder (results.json, accuracy_vs_bytes.png, results.md, label_histogram.*, flower.log)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="read the data set from this local mirror"),
    num_clients: Optional[int] = typer.Option(None, "--num-clients", help="simulated clients (default 10)"),
    partition: Optional[str] = typer.Option(None, "--partition", help="iid, dirichlet or pathological (default dirichlet)"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Dirichlet concentration (default 0.5)"),
    classes_per_client: Optional[int] = typer.Option(None, "--classes-per-client", help="pathological: classes per client (default 2)"),
    strategies: Optional[str] = typer.Option(None, "--strategies", help="comma list: fedcond, fedcond-iterative, fedavg, fedprox, fedadam (default fedcond,fedavg,fedprox)"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="rounds for iterative strategies (one-shot FedCond runs 1)"),
    ipc: Optional[int] = typer.Option(None, "--ipc", help="synthetic images per class per client (default 10)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of partitions, models and sampling of failures"),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="FedCond clients' distillation method (default dm)"),
    mode: Optional[str] = typer.Option(None, "--mode", help="FedCond mode: oneshot or iterative"),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="distillation iterations per client"),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="fraction of clients sampled per round"),
    local_epochs: Optional[int] = typer.Option(None, "--local-epochs", help="FedAvg/FedProx local epochs"),
    lr: Optional[float] = typer.Option(None, "--lr", help="FedAvg/FedProx client learning rate"),
    proximal_mu: Optional[float] = typer.Option(None, "--proximal-mu", help="FedProx mu"),
    server_epochs: Optional[int] = typer.Option(None, "--server-epochs", help="FedCond server epochs on the pooled sets"),
    fail_fraction: Optional[float] = typer.Option(None, "--fail-fraction", help="fraction of clients failing each round (seeded)"),
    fail_mode: Optional[str] = typer.Option(None, "--fail-mode", help="raise (client error) or corrupt (NaN payload)"),
    client_cpus: float = typer.Option(1.0, "--client-cpus", help="simulation: CPUs per client"),
    client_gpus: float = typer.Option(0.0, "--client-gpus", help="simulation: GPU fraction per client (e.g. 0.25)"),
    reference: str = typer.Option("full", "--reference", help="centralised reference: none, full or distill"),
    config: Optional[Path] = typer.Option(None, "--config", help="run-config TOML: FederateConfig's fields as kebab-case keys, as `flwr run --run-config` reads (flags override it)"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="FedCond method option key=value (repeatable): a field of the method's config, e.g. -o lr_images=0.5"),
) -> None:
    """Run FedCond and baselines on the same client partitions; report accuracy against bytes sent."""
    from fedcond.federated.config import FederateConfig  # noqa: PLC0415

    values = {
        "dataset": dataset, "data_dir": str(data_dir) if data_dir else None, "num_clients": num_clients,
        "partition": partition, "alpha": alpha, "classes_per_client": classes_per_client, "rounds": rounds,
        "ipc": ipc, "seed": seed, "method": method, "mode": mode, "iterations": iterations, "fraction": fraction,
        "local_epochs": local_epochs, "lr": lr, "proximal_mu": proximal_mu, "server_epochs": server_epochs,
        "fail_fraction": fail_fraction, "fail_mode": fail_mode, "strategies": strategies,
    }
    if config is not None:
        cfg = FederateConfig.from_toml(config, **values)
    else:
        cfg = FederateConfig(**{k: v for k, v in values.items() if v is not None})
    if option:  # validated against the method's config class: unknown keys are one-line errors
        cfg = cfg.with_method_options(parse_options(option))
    names = cfg.strategy_names
    if reference not in ("none", "full", "distill"):
        raise FedcondError(f"--reference must be none, full or distill, got {reference!r}")

    from simulations.experiment import run_experiment  # noqa: PLC0415
    from simulations.runner import backend_config  # noqa: PLC0415

    console.print(f"[bold]federate[/] {cfg.dataset}: {cfg.num_clients} clients, {cfg.partition}, strategies {', '.join(names)}")
    console.print(f"  Flower's log: {out / 'flower.log'}")

    def done(record: dict) -> None:
        console.print(f"  {record['strategy']}: accuracy {record['final_accuracy']:.4f}, "
                      f"upload {record['upload_bytes'] / 2**20:.3f} MB, lost {record['clients_lost_total']} "
                      f"client-rounds, {record['wall_seconds']:.0f} s")

    result = run_experiment(cfg, names, out, backend_config(client_cpus, client_gpus), reference, done)
    typer.echo(result["table"])
    typer.echo(f"wrote {out / 'results.json'}, {out / 'accuracy_vs_bytes.png'}, {out / 'results.md'}, {out / 'label_histogram.png'}, {out / 'flower.log'}")

