"""``fedcond federate``: compare FedCond with FedAvg/FedProx in a local Flower simulation,
with its references (raw-data bytes, random real images, storage dtypes, upper bound)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from fedcond.commands.common import console, parse_options, progress_bar, user_errors
from fedcond.errors import FedcondError


class RunProgress:
    """The console while runs go on: one progress bar per run over its rounds x sampled
    clients, with the clients finished in the current round and the time left; one line per
    finished round, one line per finished run (Flower's log is in a file).

    Called with :mod:`fedcond.federated.events` events; they arrive from the runner's and the
    ServerApp's threads, and rich's progress display takes updates from either.
    """

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._update: Callable[..., None] | None = None
        self._done = 0
        self._rounds, self._round, self._round_start = 1, 0, 0

    def __call__(self, event: Any) -> None:
        from fedcond.federated.events import ClientReplied, RoundFinished, RunFinished, RunStarted  # noqa: PLC0415

        if isinstance(event, RunStarted):
            self.close()
            self._done = (event.first_round - 1) * event.num_clients
            self._rounds, self._round = event.num_rounds, 0
            total = event.num_rounds * event.num_clients
            resumed = f" (resuming at round {event.first_round})" if event.first_round > 1 else ""
            self._update = self._stack.enter_context(progress_bar(f"{event.name}{resumed}", total))
            self._update(self._done, round=event.first_round)
        elif isinstance(event, ClientReplied) and self._update is not None:
            if event.server_round != self._round:  # the first reply of a round: count its sampled clients
                self._round, self._round_start = event.server_round, self._done
            self._done = self._round_start + event.replied
            total = self._round_start + event.sampled * (self._rounds - event.server_round + 1)
            self._update(self._done, total=total, round=f"{event.server_round}/{self._rounds}",
                         clients=f"{event.replied}/{event.sampled}")
        elif isinstance(event, RoundFinished):
            acc = f"{event.accuracy:.4f}" if event.accuracy is not None else "-"
            console.print(f"  {event.name} round {event.server_round}/{event.num_rounds}: acc {acc}, "
                          f"up {event.upload_bytes / 2**20:.3f} MB, {event.clients_ok} ok, "
                          f"{event.clients_lost} lost, {event.seconds:.0f} s", overflow="ellipsis", no_wrap=True)
        elif isinstance(event, RunFinished):
            self.close()
            r = event.record
            source = " (finished before: from its checkpoint)" if event.from_checkpoint else ""
            console.print(f"[bold]{event.name}[/]: accuracy {r['final_accuracy']:.4f}, upload "
                          f"{r['upload_bytes'] / 2**20:.3f} MB, lost {r['clients_lost_total']} client-rounds, "
                          f"{r.get('wall_seconds', 0):.0f} s{source}")

    def close(self) -> None:
        self._stack.close()
        self._update = None


@user_errors
def command(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="digits, mnist, cifar10, ... (default digits)"),
    out: Path = typer.Option(
        ...,
        "--out",
        help="output folder (results.json, accuracy_vs_bytes.png, results.md, label_histogram.*, flower.log, "
             "checkpoints/)",
    ),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="read the data set from this local mirror"),
    num_clients: Optional[int] = typer.Option(None, "--num-clients", help="simulated clients (default 10)"),
    partition: Optional[str] = typer.Option(
        None, "--partition", help="iid, dirichlet or pathological (default dirichlet)"
    ),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Dirichlet concentration (default 0.5)"),
    classes_per_client: Optional[int] = typer.Option(
        None, "--classes-per-client", help="pathological: classes per client (default 2)"
    ),
    strategies: Optional[str] = typer.Option(
        None,
        "--strategies",
        help="comma list: fedcond, fedcond-iterative, fedavg, fedprox, fedadam (default fedcond,fedavg,fedprox)",
    ),
    rounds: Optional[int] = typer.Option(
        None, "--rounds", help="rounds for iterative strategies (one-shot FedCond runs 1)"
    ),
    ipc: Optional[int] = typer.Option(None, "--ipc", help="synthetic images per class per client (default 10)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of partitions, models and sampling of failures"),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="FedCond clients' distillation method (default dm)"
    ),
    mode: Optional[str] = typer.Option(None, "--mode", help="FedCond mode: oneshot or iterative"),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="distillation iterations per client"),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="fraction of clients sampled per round"),
    local_epochs: Optional[int] = typer.Option(None, "--local-epochs", help="FedAvg/FedProx local epochs"),
    lr: Optional[float] = typer.Option(None, "--lr", help="FedAvg/FedProx client learning rate"),
    proximal_mu: Optional[float] = typer.Option(None, "--proximal-mu", help="FedProx mu"),
    server_epochs: Optional[int] = typer.Option(
        None, "--server-epochs", help="FedCond server epochs on the pooled sets"
    ),
    server_augment: Optional[str] = typer.Option(
        None, "--server-augment", help="DSA families of that training, e.g. crop_scale_rotate; none or auto (default)"
    ),
    fail_fraction: Optional[float] = typer.Option(
        None, "--fail-fraction", help="fraction of clients failing each round (seeded)"
    ),
    fail_mode: Optional[str] = typer.Option(None, "--fail-mode", help="raise (client error) or corrupt (NaN payload)"),
    client_cpus: float = typer.Option(1.0, "--client-cpus", help="simulation: CPUs per client"),
    client_gpus: float = typer.Option(0.0, "--client-gpus", help="simulation: GPU fraction per client (e.g. 0.25)"),
    storage_dtype: Optional[str] = typer.Option(
        None, "--storage-dtype", help="FedCond's upload dtype: float32, float16 or uint8 (default float32)"
    ),
    storage_dtypes: Optional[str] = typer.Option(
        None,
        "--storage-dtypes",
        help="comma list of upload dtypes compared: FedCond reruns once per dtype other than --storage-dtype (default "
             "float32,float16,uint8)",
    ),
    random_reference: Optional[bool] = typer.Option(
        None,
        "--random-reference/--no-random-reference",
        help="also run FedCond with random real images at the same bytes (default on)",
    ),
    dp_epsilon: Optional[float] = typer.Option(
        None, "--dp-epsilon", help="FedCond clients distill with dp-dm at this epsilon (one-shot; default 0: no DP)"
    ),
    dp_delta: Optional[float] = typer.Option(None, "--dp-delta", help="their delta (default 1e-5)"),
    dp_epsilons: Optional[str] = typer.Option(
        None,
        "--dp-epsilons",
        help="comma list of epsilons: FedCond reruns once per other epsilon, for accuracy against epsilon",
    ),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="arithmetic of every training and distillation loop: auto (default: bfloat16 where "
                                  "the device runs it fast), float32 or bfloat16"
    ),
    reference: str = typer.Option(
        "full", "--reference", help="centralised reference: none, full (upper bound trained to a plateau) or distill"
    ),
    fresh: bool = typer.Option(False, "--fresh", help="discard OUT/checkpoints and start over instead of resuming"),
    config: Optional[Path] = typer.Option(
        None,
        "--config",
        help="run-config TOML: FederateConfig's fields as kebab-case keys, as `flwr run --run-config` reads (flags "
             "override it)",
    ),
    option: Optional[list[str]] = typer.Option(
        None,
        "--option",
        "-o",
        help="FedCond method option key=value (repeatable): a field of the method's config, e.g. -o lr_images=0.5",
    ),
) -> None:
    """Run FedCond and baselines on the same client partitions; report accuracy against bytes sent."""
    from fedcond.federated.config import FederateConfig  # noqa: PLC0415

    values = {
        "dataset": dataset, "data_dir": str(data_dir) if data_dir else None, "num_clients": num_clients,
        "partition": partition, "alpha": alpha, "classes_per_client": classes_per_client, "rounds": rounds,
        "ipc": ipc, "seed": seed, "method": method, "mode": mode, "iterations": iterations, "fraction": fraction,
        "local_epochs": local_epochs, "lr": lr, "proximal_mu": proximal_mu, "server_epochs": server_epochs,
        "server_augment": server_augment,
        "fail_fraction": fail_fraction, "fail_mode": fail_mode, "strategies": strategies,
        "storage_dtype": storage_dtype, "storage_dtypes": storage_dtypes, "random_reference": random_reference,
        "dp_epsilon": dp_epsilon, "dp_delta": dp_delta, "dp_epsilons": dp_epsilons, "precision": precision,
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

    from fedcond.federated.experiment import run_experiment  # noqa: PLC0415
    from fedcond.federated.runner import backend_config  # noqa: PLC0415

    console.print(
        f"[bold]federate[/] {cfg.dataset}: {cfg.num_clients} clients, {cfg.partition}, strategies {', '.join(names)}"
    )
    console.print(f"  Flower's log: {out / 'flower.log'}")
    console.print(f"  checkpoints: {out / 'checkpoints'} (the same command again resumes)")
    if fresh and (out / "checkpoints").is_dir():
        import shutil  # noqa: PLC0415

        shutil.rmtree(out / "checkpoints")
    progress = RunProgress()
    try:
        result = run_experiment(cfg, names, out, backend_config(client_cpus, client_gpus), reference, progress)
    finally:
        progress.close()
    typer.echo(result["table"])
    extra = f", {result['epsilon_plot']}" if result.get("epsilon_plot") else ""
    typer.echo(
        f"wrote {out / 'results.json'}, {out / 'accuracy_vs_bytes.png'}{extra}, {out / 'results.md'}, "
        f"{out / 'label_histogram.png'}, {out / 'flower.log'}"
    )

