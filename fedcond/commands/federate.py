"""``fedcond federate``: compare FedCond with FedAvg/FedProx in a local Flower simulation,
with its references (raw-data bytes, random real images, storage dtypes, upper bound)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from fedcond.commands.common import (
    console,
    existing_file,
    existing_folder,
    known_dataset,
    parse_options,
    progress_bar,
    user_errors,
    writable_folder,
)
from fedcond.commands.config_options import config_options
from fedcond.errors import FedcondError
from fedcond.federated.config import FederateConfig  # torch-free: --help shows its defaults


class RunProgress:
    """The console while runs go on: one progress bar per run over its rounds x sampled
    clients, with the clients finished in the current round and the time left; one line per
    finished round, one line per finished run (Flower's log is in a file); then a bar over
    the centralised upper bound's epochs (and the central distillation's iterations) and
    its line. Sizes in MiB (2^20 bytes), as in the tables.

    Called with :mod:`fedcond.federated.events` events; they arrive from the runner's and the
    ServerApp's threads, and rich's progress display takes updates from either.
    """

    def __init__(self, private: bool = False, checkpoints: Path | None = None) -> None:
        self._private = private  # a DP experiment: no timings on the console (they grow with the private data)
        # where each run's clients write their distillation progress (fedcond.federated.client_progress)
        self._checkpoints = checkpoints
        self._watch: tuple[Any, Any] | None = None  # (thread, stop event) polling that progress
        self._current: tuple[str, int, int, int] = ("", 0, 0, 1)  # run, round, replies, sampled: what the poll reads
        self._stack = ExitStack()
        self._update: Callable[..., None] | None = None
        self._done = 0
        self._rounds, self._round, self._round_start = 1, 0, 0
        self._phase = ""
        self._elapsed: dict[str, float] = {}  # each run's cumulative seconds at its last finished round

    def __call__(self, event: Any) -> None:
        from fedcond.federated.events import (
            ClientReplied,
            ReferenceFinished,
            ReferenceProgress,
            RoundFinished,
            RunFinished,
            RunStarted,
        )

        if isinstance(event, RunStarted):
            self.close()
            self._done = (event.first_round - 1) * event.num_clients
            self._rounds, self._round = event.num_rounds, 0
            total = event.num_rounds * event.num_clients
            resumed = f" (resuming at round {event.first_round})" if event.first_round > 1 else ""
            bar = progress_bar(f"{event.name}{resumed}", total, timed=not self._private)
            self._update = self._stack.enter_context(bar)
            # Nothing moves until the first client replies (a FedCond client distills first): say what goes on.
            self._update(self._done, round=event.first_round, now="clients at work, the bar moves as they reply")
            self._current = (event.name, event.first_round, 0, event.num_clients)
            if self._checkpoints is not None:
                self._watch_clients(self._checkpoints / event.name)
        elif isinstance(event, ClientReplied) and self._update is not None:
            if event.server_round != self._round:  # the first reply of a round: count its sampled clients
                self._round, self._round_start = event.server_round, self._done
            self._current = (event.name, event.server_round, event.replied, event.sampled)
            self._done = self._round_start + event.replied
            total = self._round_start + event.sampled * (self._rounds - event.server_round + 1)
            # After the round's last reply the server works alone (FedCond trains on the pool): say so.
            now = {"now": "server aggregates, trains, evaluates"} if event.replied == event.sampled else {}
            self._update(self._done, total=total, round=f"{event.server_round}/{self._rounds}",
                         clients=f"{event.replied}/{event.sampled}", **now)
        elif isinstance(event, RoundFinished):
            acc = f"{event.accuracy:.4f}" if event.accuracy is not None else "-"
            console.print(f"  {event.name} round {event.server_round}/{event.num_rounds}: acc {acc}, "
                          f"up {event.upload_bytes / 2**20:.3f} MiB, {event.clients_ok} ok, "
                          f"{event.clients_lost} lost, {self._round_time(event) if not self._private else 'DP'}",
                          overflow="ellipsis", no_wrap=True)
            if self._update is not None and event.server_round < event.num_rounds:
                self._current = (event.name, event.server_round + 1, 0, self._current[3])
                self._update(self._done, round=f"{event.server_round + 1}/{event.num_rounds}", now="clients at work")
        elif isinstance(event, RunFinished):
            self.close()
            r = event.record
            source = " (finished before: from its checkpoint)" if event.from_checkpoint else ""
            chosen = (f"test accuracy {r['selected_accuracy']:.4f} at round {r['selected_round']} (best validation)"
                      if r.get("selected_round") is not None else f"accuracy {r['final_accuracy']:.4f}")
            console.print(f"[bold]{event.name}[/]: {chosen}, upload "
                          f"{r['upload_bytes'] / 2**20:.3f} MiB, lost {r['clients_lost_total']} client-rounds, "
                          f"{'DP' if self._private else format(r.get('wall_seconds', 0), '.0f') + ' s'}{source}"
                          f"{achieved_privacy(r)}")
        elif isinstance(event, ReferenceProgress):
            if event.phase != self._phase:  # a new phase: its own bar
                self.close()
                self._phase = event.phase
                label = {"upper bound": "upper bound (to a plateau)",
                         "distill": "central distillation"}.get(event.phase, event.phase)
                self._update = self._stack.enter_context(progress_bar(label, event.total, timed=not self._private))
            if self._update is not None:
                self._update(event.step, event.total, **event.metrics)
        elif isinstance(event, ReferenceFinished):
            self.close()
            self._phase = ""
            ref = event.reference
            source = " (from its checkpoint: inputs unchanged)" if event.from_checkpoint else ""
            if "full_data_accuracy" in ref:
                console.print(f"[bold]upper bound[/]: accuracy {ref['full_data_accuracy']:.4f} after "
                              f"{ref['full_data_epochs']} epochs (best {ref['full_data_best_epoch']}), "
                              f"{ref['full_data_seconds']:.0f} s{source}")
            if "centralised_distill_accuracy" in ref:
                console.print(f"[bold]central {ref['centralised_distill_method']}[/] at ipc "
                              f"{ref['centralised_distill_ipc']}: accuracy {ref['centralised_distill_accuracy']:.4f}, "
                              f"{ref['centralised_distill_seconds']:.0f} s{source}")

    def _round_time(self, event: Any) -> str:
        """The round's own duration and the run's time so far ("round 3 s, 25 s elapsed"):
        the event's seconds are cumulative since the run began (its first round, if resumed)."""
        earlier = self._elapsed.get(event.name, 0.0 if event.server_round == 1 else None)
        self._elapsed[event.name] = event.seconds
        own = f"round {event.seconds - earlier:.0f} s, " if earlier is not None else ""
        return f"{own}{event.seconds:.0f} s elapsed"

    poll_s = 2.0  # seconds between two looks at the clients' progress files

    def _watch_clients(self, folder: Path) -> None:
        """Poll the run's client progress files while its bar is up: how many clients distill
        this round and how far, on average, they have got (they reply only when done)."""
        import threading  # only runs with a checkpoint folder watch clients

        from fedcond.federated.client_progress import read_progress

        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(self.poll_s):
                update, (_, server_round, replied, sampled) = self._update, self._current
                state = read_progress(folder, server_round)
                if update is not None and state is not None and replied < sampled:
                    update(self._done, now=f"clients distilling: {state['clients']} started, "
                                           f"{state['fraction']:.0%} of their iterations done")

        thread = threading.Thread(target=poll, name="client-progress", daemon=True)
        thread.start()
        self._watch = (thread, stop)

    def close(self) -> None:
        if self._watch is not None:
            self._watch[1].set()
            self._watch[0].join()
            self._watch = None
        self._stack.close()
        self._update = None


def achieved_privacy(record: dict[str, Any]) -> str:
    """", DP (epsilon, delta) = (...)" for a run whose every pooled client set carries a DP
    guarantee: the largest client's (each image reaches the server through one client's set)."""
    if record.get("strategy") == "dpfedavg" and record.get("epsilon") is not None:  # accounted over all its steps
        return f", DP (epsilon, delta) = ({record['epsilon']:.4g}, {record['delta']:.3g}) accounted over every step"
    pool = record.get("pool_provenance") or []
    if not pool or any(p.get("epsilon") is None for p in pool):
        return ""
    return (f", DP (epsilon, delta) = ({max(p['epsilon'] for p in pool):.4g}, "
            f"{max(p['delta'] for p in pool):.3g}) achieved, the largest client's")


# The options of `fedcond federate`, in --help's order: FederateConfig's fields (flag, type, default
# and help from the field) and, where they go, the command's own (out, client_cpus, ...).
LAYOUT = ("dataset", "out", "data_dir", "num_clients", "partition", "alpha", "classes_per_client", "strategies",
          "rounds", "ipc", "seed", "method", "mode", "iterations", "fraction", "local_epochs", "lr", "proximal_mu",
          "server_epochs", "augment", "server_augment", "unequal_recipe", "val_fraction", "train_per_class",
          "fail_fraction",
          "fail_mode", "client_cpus", "client_gpus", "storage_dtype", "storage_dtypes", "random_reference",
          "herding_reference", "dp_epsilon", "dp_delta", "dp_clip", "dp_sample_rate", "dp_non_private", "dp_epsilons",
          "normalize", "precision",
          "reference", "fresh", "config", "option")


@user_errors
@config_options(FederateConfig, LAYOUT)
def command(
    out: Path = typer.Option(
        ...,
        "--out",
        help="output folder (results.json, accuracy_vs_bytes.png, results.md, label_histogram.*, flower.log, "
             "checkpoints/)",
    ),
    client_cpus: float = typer.Option(1.0, "--client-cpus", help="simulation: CPUs per client"),
    client_gpus: float = typer.Option(0.0, "--client-gpus", help="simulation: GPU fraction per client (e.g. 0.25)"),
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
    **settings: Any,
) -> None:
    """Run FedCond and baselines on the same client partitions; report accuracy against bytes sent."""
    # The settings given as flags (None: the config file's value or the field's default).
    given = {name: value for name, value in settings.items() if value is not None}
    # Paths first: nothing may fail on them after the runs.
    writable_folder(out)
    existing_folder(given.get("data_dir"))
    existing_file(config, "--config")
    if client_cpus <= 0 or client_gpus < 0:
        raise FedcondError(f"--client-cpus must be > 0 and --client-gpus >= 0, got {client_cpus} and {client_gpus}")
    if "data_dir" in given:
        given["data_dir"] = str(given["data_dir"])
    cfg = FederateConfig.from_toml(config, **given) if config is not None else FederateConfig(**given)
    if option:  # validated against the method's config class: unknown keys are one-line errors
        cfg = cfg.with_method_options(parse_options(option))
    if cfg.num_clients == 0:  # a flwr run config's "the federation's size": this command makes its own federation
        raise FedcondError("num-clients = 0 (flwr run: the federation's size) cannot size the simulation fedcond "
                           f"federate starts: give --num-clients N (default {FederateConfig.num_clients})")
    names = cfg.strategy_names
    if reference not in ("none", "full", "distill"):
        raise FedcondError(f"--reference must be none, full or distill, got {reference!r}")
    rounds = given.get("rounds")
    if rounds is not None and all(cfg.for_strategy(s).effective_rounds == 1 for s in names) and rounds != 1:
        raise FedcondError(f"--rounds {rounds} has no effect: one-shot FedCond runs exactly one round; add a strategy "
                           "that runs rounds (fedavg, fedprox, fedadam, fedcond-iterative, feddm, fedaf) or --mode "
                           "iterative, "
                           "or drop --rounds")
    known_dataset(cfg.dataset)  # before the header: a misspelt name prints nothing else
    if client_gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise FedcondError(f"--client-gpus {client_gpus} asks for a GPU, but torch sees no CUDA device; drop it")
    if "dpfedavg" in names and cfg.dp_epsilon > 0:  # its noise for the target epsilon, or a one-line error
        from fedcond.federated.dp_sgd import plan_for

        plan_for(cfg.for_strategy("dpfedavg"))

    from fedcond.simulations.experiment import run_experiment
    from fedcond.simulations.runner import backend_config

    console.print(
        f"[bold]federate[/] {cfg.dataset}: {cfg.num_clients} clients, {cfg.partition}, strategies {', '.join(names)}"
    )
    console.print(f"  Flower's log: {out / 'flower.log'}")
    console.print(f"  checkpoints: {out / 'checkpoints'} (the same command again resumes)")
    if fresh and (out / "checkpoints").is_dir():
        import shutil

        shutil.rmtree(out / "checkpoints")
    progress = RunProgress(private=cfg.dp_epsilon > 0, checkpoints=out / "checkpoints")
    try:
        result = run_experiment(cfg, names, out, backend_config(client_cpus, client_gpus), reference, progress)
    finally:
        progress.close()
    typer.echo(result["table"])
    extra = f", {result['epsilon_plot']}" if result.get("epsilon_plot") else ""
    rest = (f"{out / 'label_histogram.png'}, {out / 'flower.log'}" if not cfg.dp_epsilon > 0 else
            f"{out / 'flower.log'} (DP: every file here is DP output, flower.log and checkpoints/ without timings; "
            "the non-DP parts "
            f"{'are in ' + str(out / 'non_private') if cfg.dp_non_private else 'were not run (--dp-non-private)'})")
    typer.echo(f"wrote {out / 'results.json'}, {out / 'accuracy_vs_bytes.png'}{extra}, {out / 'results.md'}, {rest}")

