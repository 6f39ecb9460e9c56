"""The GPU figures of issue 13 in one command: speed beside the authors' loop structure,
paper-length DM, then the federated and continual GPU benchmarks while time remains.

On a machine with one GPU (sized for 20 minutes of an H100), MNIST's raw files and
CIFAR-10 copied into the git-ignored ``.data/`` (``.data/MNIST/raw/*-ubyte.gz``,
``.data/cifar10-jpeg.tar.gz``; any copy ``fedcond.data.load_dataset`` reads works)::

    python benchmarks/gpu_suite.py --data-dir .data --out runs/gpu_suite

It writes ``DIR/results.json`` and ``DIR/results.md`` (command, device, versions, every
cell's numbers) after every cell. The same command again skips finished cells: a
paper-length distillation stopped by its time budget continues from its checkpoint
(``DIR/checkpoints/``), so a machine lent in 10-minute calls runs it as two calls of
``--time-limit 540`` with the same ``--out``. The cells, in order:

1. ``time-*``: seconds per iteration and peak memory of fedcond's DM (MNIST and CIFAR-10,
   IPC 1/10/50), DSA (CIFAR-10 IPC10, per outer iteration) and MTT (CIFAR-10 IPC10), each
   beside the reference loop of ``benchmarks/reference_loops.py`` timed in the same run;
2. ``paper-dm-*``: DM at IPC10 for 20,000 iterations on MNIST and CIFAR-10, evaluated with
   the standard protocol (ConvNet trained 1,000 epochs with DSA, 5 runs) beside random real
   images under the same protocol; each gets at most ``--paper-budget`` seconds per call;
3. ``cmd-fair-*`` (issues 38-40, first when a GPU is lent: ``--cells cmd-fair``): the CIFAR-10
   fair-path cells of docs/benchmarks.md ("Not yet rerun on the fair path") on the GPU: the
   federated benchmark at Dirichlet 0.5 then 0.1, 3 seeds, with FedDM and FedAF for 10
   rounds at their papers' 1,000 iterations; DP-FedCond against DP-FedAvg at epsilon 1 and
   10; SplitCIFAR-10's tune and compare. Their results land under ``DIR/extras/fair/``
   (the continual ones in ``benchmarks/results/``: copy them out);
4. ``cmd-*``: the federated (MNIST IPC 1 with 2,000 DM iterations per client, 4 seeds;
   CIFAR-10), continual and scale benchmarks' GPU commands (their own
   docstrings), each given what is left of ``--time-limit`` and stopped at it (they resume
   when run again; the continual benchmark writes into ``benchmarks/results/``).

No cell starts after ``--time-limit`` seconds; what was not run is listed as skipped.
Without a GPU the command stops with one ``error:`` line (exit code 2). ``--dry-run``
runs the same plan on the CPU at toy size on scikit-learn's digits, offline, in seconds
(the command cells are listed, not run); ``tests/test_gpu_suite.py`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fedcond, whatever is installed

import torch

from fedcond.data import ImageDataset, load_dataset
from fedcond.distill import Callback, get_distiller
from fedcond.distill.experts import ensure_experts
from fedcond.errors import FedcondError
from fedcond.evaluate import EvalConfig, evaluate_random, evaluate_synthetic
from fedcond.runinfo import device_description, package_versions, peak_memory_bytes, write_json
from fedcond.synthetic import SyntheticSet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_suite_report import markdown
from reference_loops import (
    reference_style_dm_seconds,
    reference_style_dsa_seconds,
    reference_style_mtt_seconds,
    sync,
)

FORMAT = 1
# The issue's reference figures (the authors' code on one H100) and the goals set against them.
TARGETS = {
    "time-dm-mnist-ipc10": {"reference_seconds": 0.078, "goal_seconds": 0.008},
    "time-dm-cifar10-ipc10": {"reference_seconds": 0.078, "goal_seconds": 0.008},
    "time-dsa-cifar10-ipc10": {"reference_seconds": 4.1, "goal_seconds": 0.8},
}


@dataclass(frozen=True)
class Sizes:
    """How big every cell is: the real plan, or the dry run's toy version of it."""

    datasets: dict[str, str]  # plan name -> what load_dataset reads
    dm_ipcs: tuple[int, ...] = (1, 10, 50)
    block: int = 5  # iterations between timing stamps (one host sync each); one warm-up block
    blocks: int = 4  # timed blocks
    reference_iterations: int = 10
    dsa: dict[str, Any] = field(default_factory=dict)
    dsa_iterations: int = 3  # timed outer iterations, after one warm-up
    reference_dsa_iterations: int = 2
    mtt: dict[str, Any] = field(default_factory=lambda: {
        "syn_steps": 30, "expert_epochs": 2, "max_start_epoch": 2, "num_experts": 1, "expert_train_epochs": 4})
    paper_iterations: int = 20_000
    paper_every: int = 500  # checkpoint / budget check / snapshot period
    eval_runs: int = 5
    eval_epochs: int = 1000
    commands: bool = True


REAL = Sizes(datasets={"mnist": "mnist", "cifar10": "cifar10"})
DRY = Sizes(datasets={"mnist": "digits", "cifar10": "digits"}, block=1, blocks=2, reference_iterations=1,
            dsa={"outer_loop": 2, "inner_loop": 1, "batch_real": 32}, dsa_iterations=1, reference_dsa_iterations=1,
            mtt={"syn_steps": 3, "expert_epochs": 1, "max_start_epoch": 1, "num_experts": 1, "expert_train_epochs": 2},
            paper_iterations=6, paper_every=3, eval_runs=2, eval_epochs=3, commands=False)


class OutOfTime(Exception):
    """Raised inside a distillation when its time budget is spent (right after a checkpoint)."""


@dataclass
class Suite:
    """One call of the suite: where it writes, its clock, the loaded data, the results so far."""

    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    out: Path
    results: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    _data: dict[str, ImageDataset] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.args.time_limit - (time.monotonic() - self.started)

    def data(self, name: str) -> ImageDataset:
        if name not in self._data:
            self._data[name] = load_dataset(self.sizes.datasets[name], data_dir=self.args.data_dir, device=self.device)
        return self._data[name]

    def save(self) -> None:
        self.results["elapsed_seconds_this_call"] = round(time.monotonic() - self.started, 1)
        write_json(self.out / "results.json", self.results)
        (self.out / "results.md").write_text(markdown(self.results))

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.0f} s] {text}", flush=True)


# ---------------------------------------------------------------- timing cells
def time_fedcond(suite: Suite, dataset: ImageDataset, method: str, options: dict[str, Any],
                 block: int, blocks: int) -> dict[str, Any]:
    """fedcond's seconds per iteration over ``blocks * block`` iterations after one warm-up block."""
    device = suite.device
    d = get_distiller(method)
    total = block * (blocks + 1)
    config = d.config_class.from_dict({**options, "iterations": total, "log_every": block})
    stamps: dict[int, tuple[float, float]] = {}

    def stamp(i: int, _total: int, _metrics: dict[str, float]) -> None:
        sync(device)
        stamps[i] = (time.perf_counter(), time.process_time())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    d.distill(dataset, config, torch.Generator().manual_seed(0), device=device, callbacks=[stamp])
    (w0, c0), (w1, c1) = stamps[block], stamps[total]
    n = block * blocks
    return {"seconds_per_iteration": (w1 - w0) / n, "cpu_seconds_per_iteration": (c1 - c0) / n, "timed_iterations": n,
            "warmup": block, "peak_memory_mb": peak_memory_bytes(device) / 2**20}


def timing_cell(suite: Suite, name: str, ours: Callable[[], dict], reference: Callable[[], dict],
                settings: dict) -> dict[str, Any]:
    """Both loops' figures and the speed-up; on a GPU, the goal check where the issue sets one."""
    a, b = ours(), reference()
    row = {"settings": settings, "fedcond": a, "reference_loop": b,
           "speedup": b["seconds_per_iteration"] / a["seconds_per_iteration"]}
    if name in TARGETS and suite.device.type == "cuda":  # the goals are H100 figures
        row["target"] = {**TARGETS[name], "meets_goal": a["seconds_per_iteration"] <= TARGETS[name]["goal_seconds"]}
    return row


def dm_timing(suite: Suite, data_name: str, ipc: int) -> dict[str, Any]:
    s, data = suite.sizes, suite.data(data_name)
    return timing_cell(
        suite, f"time-dm-{data_name}-ipc{ipc}",
        lambda: time_fedcond(suite, data, "dm", {"ipc": ipc}, s.block, s.blocks),
        lambda: reference_style_dm_seconds(data, ipc, s.reference_iterations, suite.device),
        {"method": "dm", "dataset": data.name, "ipc": ipc, "batch_real": 256})


def dsa_timing(suite: Suite, data_name: str, ipc: int) -> dict[str, Any]:
    s, data = suite.sizes, suite.data(data_name)
    loops = {k: v for k, v in s.dsa.items() if k in ("outer_loop", "inner_loop")}
    return timing_cell(
        suite, f"time-dsa-{data_name}-ipc{ipc}",
        lambda: time_fedcond(suite, data, "dsa", {"ipc": ipc, **s.dsa}, 1, s.dsa_iterations),
        lambda: reference_style_dsa_seconds(data, ipc, s.reference_dsa_iterations, suite.device,
                                            batch_real=s.dsa.get("batch_real", 256), **loops),
        {"method": "dsa", "dataset": data.name, "ipc": ipc, "per": "outer iteration", **s.dsa})


def mtt_timing(suite: Suite, data_name: str, ipc: int) -> dict[str, Any]:
    s, data = suite.sizes, suite.data(data_name)
    options = {"ipc": ipc, **s.mtt, "experts_dir": str(suite.out / "experts" / data_name)}
    config = get_distiller("mtt").config_class.from_dict(options)
    # Trained once here, outside both timings, and shared by both loops.
    experts = ensure_experts(data.to(suite.device), config.expert_config(), config.experts_dir)
    return timing_cell(
        suite, f"time-mtt-{data_name}-ipc{ipc}",
        lambda: time_fedcond(suite, data, "mtt", options, s.block, s.blocks),
        lambda: reference_style_mtt_seconds(data, ipc, s.reference_iterations, suite.device, experts,
                                            syn_steps=config.syn_steps, expert_epochs=config.expert_epochs,
                                            max_start_epoch=config.max_start_epoch, batch_syn=config.batch_syn),
        {"method": "mtt", "dataset": data.name, "ipc": ipc, **s.mtt, "gradient": config.gradient})


# ---------------------------------------------------------------- paper-length DM
class Budget(Callback):
    """Keeps the latest snapshot, raises :class:`OutOfTime` once ``deadline`` passed."""

    def __init__(self, suite: Suite, deadline: float, total: int) -> None:
        self.suite, self.deadline, self.total = suite, deadline, total
        self.latest: SyntheticSet | None = None
        self.iteration = 0
        self.first: tuple[int, float] | None = None

    def on_progress(self, iteration: int, total: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (iteration, now)
        elif iteration % (10 * self.suite.sizes.paper_every) == 0 or iteration == total:
            rate = (iteration - self.first[0]) / max(now - self.first[1], 1e-9)
            self.suite.log(f"  iteration {iteration}/{total}, loss {metrics['loss']:.3f}, {rate:.1f} it/s, "
                           f"~{(total - iteration) / max(rate, 1e-9):.0f} s to go")

    def on_snapshot(self, iteration: int, sset: SyntheticSet) -> None:
        self.latest, self.iteration = sset, iteration
        if time.monotonic() > self.deadline and iteration < self.total:
            raise OutOfTime


def paper_dm(suite: Suite, data_name: str, ipc: int = 10) -> dict[str, Any]:
    s, data, name = suite.sizes, suite.data(data_name), f"paper-dm-{data_name}-ipc{ipc}"
    previous = suite.results["cells"].get(name, {})
    d = get_distiller("dm")
    config = d.config_class.from_dict({"ipc": ipc, "iterations": s.paper_iterations, "log_every": s.paper_every,
                                       "checkpoint_every": s.paper_every, "eval_every": s.paper_every,
                                       "checkpoint_dir": str(suite.out / "checkpoints" / name)})
    eval_reserve = 0.0 if suite.args.dry_run else 90.0  # 2 x 5 evaluation runs on a GPU: well under this
    budget = min(suite.args.paper_budget, suite.remaining() - eval_reserve)
    watch = Budget(suite, time.monotonic() + budget, s.paper_iterations)
    t0 = time.perf_counter()
    try:
        sset: SyntheticSet | None = d.distill(data, config, torch.Generator().manual_seed(0), device=suite.device,
                                              callbacks=[watch])
        done = s.paper_iterations
    except OutOfTime:
        sset, done = watch.latest, watch.iteration
    row: dict[str, Any] = {
        "settings": {"method": "dm", "dataset": data.name, "ipc": ipc, "iterations": s.paper_iterations,
                     "seed": 0, **{k: v for k, v in config.to_dict().items() if k in ("batch_real", "lr_images")}},
        "iterations_done": done,
        "distill_seconds": previous.get("distill_seconds", 0.0) + time.perf_counter() - t0,
    }
    if sset is None:
        return {**row, "status": "partial", "note": "budget spent before the first checkpoint"}
    sset.save(suite.out / "sets" / f"{name}.safetensors")
    protocol = EvalConfig(epochs=s.eval_epochs, dsa=True)
    t1 = time.perf_counter()
    ours = evaluate_synthetic(sset, data, protocol, runs=s.eval_runs)
    rand = evaluate_random(data, ipc, protocol, runs=s.eval_runs)
    row.update(accuracy=ours.to_json(), random_real=rand.to_json(), eval_seconds=time.perf_counter() - t1,
               protocol=f"ConvNet, {s.eval_epochs} epochs, SGD lr 0.01 momentum 0.9 wd 5e-4, DSA "
                        f"({protocol.dsa_strategy}), {s.eval_runs} runs")
    if done < s.paper_iterations:
        row.update(status="partial", note=f"time budget spent at iteration {done}; run again to continue")
    return row


# ---------------------------------------------------------------- other benchmarks' GPU commands
def commands(suite: Suite) -> list[tuple[str, list[str]]]:
    """The federated, continual and scale benchmarks' GPU commands (see their docstrings)."""
    py, extras, data = sys.executable, suite.out / "extras", str(suite.args.data_dir)
    bench = str(ROOT / "benchmarks")
    continual = [py, f"{bench}/continual_benchmark.py", "--benchmark", "split-cifar10", "--data-dir", data,
                 "--device", "cuda", "--mem-sizes", "200", "--scratch", str(extras / "continual")]
    fair = extras / "fair"
    cifar = [py, f"{bench}/federated_benchmark.py", "--dataset", "cifar10", "--data-dir", data, "--device", "cuda",
             "--seeds", "0,1,2", "--ipcs", "10", "--factors", "1,2", "--iterations", "100", "-o", '{"batch_real": 64}',
             "--server-epochs", "100", "--tune-rounds", "5", "--grid-lr", "0.01,0.02,0.05", "--grid-epochs", "1,2,5",
             "--rounds", "20", "--feddm-rounds", "10", "--fedaf-rounds", "10",
             "--scratch", str(fair / "federated"), "--out", str(fair / "federated")]
    split = ["--benchmark", "split-cifar10", "--data-dir", data, "--device", "cuda", "--train-fraction", "0.2",
             "--mem-sizes", "200", "--scratch", str(fair / "continual")]
    return [
        # issues 38-40 first (the fair path on CIFAR-10): every cell resumes, so calls add up
        ("cmd-fair-federated-cifar10-a0.5", [*cifar[:8], "--alphas", "0.5", *cifar[8:]]),
        ("cmd-fair-federated-cifar10-a0.1", [*cifar[:8], "--alphas", "0.5,0.1", *cifar[8:]]),
        ("cmd-fair-dp-federated-cifar10", [py, f"{bench}/dp_federated_benchmark.py", "--dataset", "cifar10",
                                           "--data-dir", data, "--device", "cuda", "--dp-sample-rate", "0.006",
                                           "--seeds", "0,1,2", "--epsilons", "1,10", "--grid-clip", "0.5,1,2",
                                           "--grid-lr", "0.02,0.05,0.2", "--scratch", str(fair / "dp"),
                                           "--out", str(fair / "dp")]),
        ("cmd-fair-continual-cifar10-tune", [py, f"{bench}/continual_benchmark.py", "tune", *split,
                                             "--tune-strategies", "replay,gdumb,icarl,der,der++,joint",
                                             "--grid-lr", "0.01,0.03", "--grid-epochs", "1,5", "--mem-batch", "",
                                             "--grid-buffer-lr", "0.01", "--grid-buffer-epochs", "100,300"]),
        ("cmd-fair-continual-cifar10-compare", [py, f"{bench}/continual_benchmark.py", "compare", *split,
                                                "--seeds", "3", "--iterations", "300", "-o", "factor=2",
                                                "--buffer-epochs", "75", "--strategies",
                                                "naive,joint,replay,gdumb,icarl,der,der++,distilled-finetune,"
                                                "random-finetune,herding-finetune"]),
        # issue 12's open lever: the IPC-1 goal with DM run long per client (the CPU affords 100 iterations)
        ("cmd-federated-mnist-ipc1", [py, f"{bench}/federated_benchmark.py", "--dataset", "mnist", "--data-dir", data,
                                      "--device", "cuda", "--alphas", "0.5", "--seeds", "0,1,2,3", "--ipcs", "1",
                                      "--factors", "1,2", "--iterations", "2000", "--cells", "fedcond",
                                      "--scratch", str(extras / "federated-mnist-ipc1"),
                                      "--out", str(extras / "federated-mnist-ipc1")]),
        ("cmd-federated-cifar10", [py, f"{bench}/federated_benchmark.py", "--dataset", "cifar10", "--data-dir", data,
                                   "--device", "cuda", "--alphas", "0.5", "--seeds", "0",
                                   "--scratch", str(extras / "federated"), "--out", str(extras / "federated")]),
        ("cmd-continual-tune", [*continual[:2], "tune", *continual[2:], "--grid-epochs", "1,5",
                                "--tune-strategies", "replay,gdumb"]),
        ("cmd-continual-compare", [*continual[:2], "compare", *continual[2:], "--seeds", "3", "--iterations", "1000",
                                   "--strategies", "naive,joint,replay,gdumb,distilled-replay,distilled-finetune"]),
        ("cmd-scale", [py, f"{bench}/scale_benchmark.py", "--data-dir", data, "--device", "cuda", "--client-gpus",
                       "0.125", "--client-cpus", "1", "--clients", "10,100,1000,10000", "--tag", "_gpu",
                       "--strategies", "fedcond,fedavg,fedcond-batched,fedcond-alone", "--group-size", "64",
                       "--scratch", str(extras / "scale"), "--out", str(extras / "scale")]),
    ]


def run_command(suite: Suite, name: str, argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` in its own process group until it ends or the suite's time is up."""
    log = suite.out / "extras" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, suite.remaining()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the benchmark and its workers only
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            code = None
    row = {"command": shlex.join(argv), "log": str(log), "seconds": time.perf_counter() - t0, "exit_code": code}
    if code is None:
        row.update(status="partial", note="stopped at the time limit; it resumes when run again")
    elif code != 0:
        row.update(status="error", note=f"exit code {code}; see the log")
    return row


# ---------------------------------------------------------------- plan and main
def plan(suite: Suite) -> list[tuple[str, float, Callable[[], dict[str, Any]]]]:
    """(cell name, seconds it needs at least to be worth starting, what runs it), in order."""
    cells: list[tuple[str, float, Callable[[], dict[str, Any]]]] = []
    for data_name in ("mnist", "cifar10"):
        for ipc in suite.sizes.dm_ipcs:
            cells.append((f"time-dm-{data_name}-ipc{ipc}", 20, lambda d=data_name, i=ipc: dm_timing(suite, d, i)))
    cells.append(("time-dsa-cifar10-ipc10", 60, lambda: dsa_timing(suite, "cifar10", 10)))
    cells.append(("time-mtt-cifar10-ipc10", 60, lambda: mtt_timing(suite, "cifar10", 10)))
    for data_name in ("mnist", "cifar10"):
        cells.append((f"paper-dm-{data_name}-ipc10", 150, lambda d=data_name: paper_dm(suite, d)))
    for name, argv in commands(suite):
        cells.append((name, 120, lambda n=name, a=argv: run_command(suite, n, a)))
    return cells


def start_results(args: argparse.Namespace, out: Path, device: torch.device) -> dict[str, Any]:
    """This call's header over the results of earlier calls into the same folder."""
    path = out / "results.json"
    results: dict[str, Any] = {"format": FORMAT, "dry_run": args.dry_run, "cells": {}, "calls": []}
    if path.exists():
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise FedcondError(f"{path} is not readable JSON ({err}); delete it or use another --out") from None
        if results.get("format") != FORMAT or results.get("dry_run") != args.dry_run:
            kind = "a dry run's" if results.get("dry_run") else "a real run's"
            raise FedcondError(f"{out} holds {kind} results of another format; use another --out")
    versions = package_versions()
    versions.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None)
    call = {"command": "python " + shlex.join(sys.argv), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "time_limit_seconds": args.time_limit}
    results.update(command=call["command"], device=device_description(device), versions=versions, targets=TARGETS,
                   skipped={})
    results["calls"].append(call)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns the exit code (2 for a user error such as a missing GPU)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=".data", help="MNIST's raw files and CIFAR-10 (default .data)")
    p.add_argument("--out", required=True, type=Path, help="results folder (rerun with the same one to continue)")
    p.add_argument("--time-limit", type=float, default=19 * 60, help="seconds after which no cell starts")
    p.add_argument("--paper-budget", type=float, default=420, help="seconds per call for each paper-length DM cell")
    p.add_argument("--no-commands", action="store_true", help="leave out the federated/continual/scale commands")
    p.add_argument("--cells", default="", help="run only the cells whose names start with one of these "
                                               "comma-separated prefixes (e.g. cmd-fair: the CIFAR-10 fair path)")
    p.add_argument("--dry-run", action="store_true", help="the whole plan on the CPU at toy size on digits")
    args = p.parse_args(argv)
    try:
        if not args.dry_run and not torch.cuda.is_available():
            raise FedcondError("no CUDA GPU is available: run this on a GPU machine, or pass --dry-run for the "
                               "CPU toy version of the plan")
        if not args.dry_run and not Path(args.data_dir).is_dir():
            raise FedcondError(f"--data-dir {args.data_dir} is not a folder: copy MNIST/raw and "
                               "cifar10-jpeg.tar.gz into it (see the docstring)")
        device = torch.device("cpu" if args.dry_run else "cuda")
        # Absolute: the command cells run from the repository root, wherever this was started.
        args.data_dir = None if args.dry_run else str(Path(args.data_dir).resolve())
        args.out = args.out.resolve()
        sizes = DRY if args.dry_run else REAL
        args.out.mkdir(parents=True, exist_ok=True)
        suite = Suite(args, sizes, device, args.out, start_results(args, args.out, device))
        run_plan(suite)
    except FedcondError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'results.json'} and results.md")
    return 0


def run_plan(suite: Suite) -> None:
    """Every cell not finished by an earlier call, in order, while time remains; save after each."""
    cells = suite.results["cells"]
    for name, needs, run in plan(suite):
        if cells.get(name, {}).get("status") == "done":
            continue
        prefixes = tuple(x for x in suite.args.cells.split(",") if x)
        if prefixes and not name.startswith(prefixes):
            suite.results["skipped"][name] = f"--cells {suite.args.cells}"
            continue
        if name.startswith("cmd-") and (not suite.sizes.commands or suite.args.no_commands):
            suite.results["skipped"][name] = "dry run: not run at toy size" if suite.args.dry_run else "--no-commands"
        elif suite.remaining() < (0 if suite.args.dry_run else needs):
            suite.results["skipped"][name] = f"time limit: {suite.remaining():.0f} s left, the cell needs {needs:.0f} s"
        else:
            suite.log(f"{name} ...")
            t0 = time.perf_counter()
            try:
                row = run()
            except FedcondError:
                raise  # missing data, bad folder: the user's to fix, for every cell
            except Exception as err:
                if suite.args.dry_run:
                    raise
                row = {"status": "error", "error": f"{type(err).__name__}: {err}"}
                if suite.device.type == "cuda":
                    torch.cuda.empty_cache()
            row.setdefault("status", "done")
            row["cell_seconds"] = time.perf_counter() - t0
            cells[name] = row
            suite.log(f"{name}: {row['status']} in {row['cell_seconds']:.0f} s")
        suite.save()


if __name__ == "__main__":
    sys.exit(main())
