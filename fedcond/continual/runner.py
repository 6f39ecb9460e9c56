"""The comparison runner behind ``fedcond continual``: strategies x memory sizes x seeds.

Every run trains one of Avalanche's templates on the benchmark's train stream, one
experience at a time, and after each experience evaluates on the whole test stream with
Avalanche's ``EvaluationPlugin`` (accuracy per experience and stream, forgetting; text and
CSV loggers into the output folder). Row i of the accuracy matrix is the accuracy on each
test experience after training on experience i. ``joint`` trains once on the whole stream,
so its matrix has one row and its forgetting is 0.

Randomness: model weights come from ``get_model(seed=...)``; Avalanche's data loaders
shuffle with torch's global generator, so each run seeds it from its ``seed`` first.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.logging import CSVLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin

from fedcond.continual.benchmarks import Benchmark
from fedcond.continual.strategies import MEMORY_STRATEGIES, STRATEGIES, StrategySettings, build_strategy, replay_buffer
from fedcond.errors import FedcondError
from fedcond.models import get_model


@dataclass
class ContinualConfig:
    """One comparison: which strategies, memories and seeds, and the shared training settings.

    ``overrides`` holds per-strategy tuned values, e.g. ``{"gdumb": {"epochs": 10}}``
    (keys ``lr``, ``epochs``, ``batch_size_mem``); everything else is shared.
    """

    strategies: tuple[str, ...] = ("naive", "replay", "distilled-replay")
    mem_sizes: tuple[int, ...] = (50,)
    seeds: tuple[int, ...] = (0,)
    model: str = "convnet"
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 32
    batch_size_mem: int | None = None
    method: str = "dm"
    ipc: int | None = None
    iterations: int | None = None
    distill_options: dict[str, Any] = field(default_factory=dict)
    rebalance: str = "subselect"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise FedcondError(f"unknown strategy {', '.join(unknown) or '(none)'}: use any of {', '.join(STRATEGIES)}")
        if any(m < 1 for m in self.mem_sizes) or not self.mem_sizes:
            raise FedcondError("--mem-size must be one or more integers >= 1")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise FedcondError("epochs and batch size must be >= 1 and lr > 0")
        for name, values in self.overrides.items():
            bad = set(values) - {"lr", "epochs", "batch_size_mem"}
            if name not in STRATEGIES or bad:
                raise FedcondError(f"override for {name!r} {sorted(bad)}: only lr, epochs, batch_size_mem of a known strategy")

    def settings(self, strategy: str, mem_size: int, seed: int, bench: Benchmark) -> StrategySettings:
        """The resolved settings of one run (shared values, then the strategy's overrides)."""
        base = dict(name=strategy, mem_size=mem_size, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                    batch_size_mem=self.batch_size_mem, method=self.method, ipc=self.ipc, iterations=self.iterations,
                    distill_model=self.model, distill_options=dict(self.distill_options), rebalance=self.rebalance,
                    num_classes=bench.data.num_classes, mean=bench.data.mean, std=bench.data.std, seed=seed)
        base.update(self.overrides.get(strategy, {}))
        return StrategySettings(**base)


def plan(config: ContinualConfig) -> list[tuple[str, int, int]]:
    """(strategy, mem_size, seed) of every run; memory-free strategies run once per seed (mem 0)."""
    runs = []
    for strategy in config.strategies:
        mems = config.mem_sizes if strategy in MEMORY_STRATEGIES else (0,)
        runs += [(strategy, m, s) for m in mems for s in config.seeds]
    return runs


def run_one(bench: Benchmark, settings: StrategySettings, model_name: str, out_dir: Path,
            device: torch.device) -> dict[str, Any]:
    """Train and evaluate one strategy; return its ``runs`` entry for results.json."""
    tag = f"{settings.name}_m{settings.mem_size}_s{settings.seed}"
    torch.manual_seed(settings.seed)  # Avalanche's loaders shuffle with the global generator
    c, h, w = bench.data.image_shape
    model = get_model(model_name, c, bench.data.num_classes, (h, w), seed=settings.seed)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{tag}.txt", "w") as text_log:
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            loggers=[TextLogger(text_log), CSVLogger(log_folder=str(logs / tag))],
        )
        strategy = build_strategy(settings, model, evaluator, device)
        start = time.perf_counter()
        with warnings.catch_warnings():
            # Avalanche 0.6's own ReplayPlugin/GDumb call its deprecated ``update``: not ours to fix.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            rows, last = _train_and_eval(strategy, bench, settings.name == "joint")
        wall = time.perf_counter() - start
    buffer = replay_buffer(strategy)
    final = rows[-1]
    return {
        "strategy": settings.name,
        "mem_size": settings.mem_size,
        "seed": settings.seed,
        "final_average_accuracy": statistics.fmean(final),
        "stream_accuracy": _metric(last, "Top1_Acc_Stream/eval_phase/test_stream"),
        "forgetting": 0.0 if settings.name == "joint" else _metric(last, "StreamForgetting/eval_phase/test_stream"),
        "accuracy_matrix": rows,
        "buffer_images": len(buffer.buffer) if buffer is not None else None,
        "buffer_bytes": getattr(buffer, "nbytes", None),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("mean", "std")},
        "wall_time_s": wall,
    }


def _train_and_eval(strategy: Any, bench: Benchmark, joint: bool) -> tuple[list[list[float]], dict[str, Any]]:
    train, test = bench.scenario.train_stream, bench.scenario.test_stream
    rows: list[list[float]] = []
    last: dict[str, Any] = {}
    steps = [train] if joint else list(train)
    for step in steps:
        strategy.train(step)
        last = strategy.eval(test)
        rows.append([_exp_accuracy(last, exp, bench.task_incremental) for exp in range(len(test))])
    return rows, last


def _exp_accuracy(metrics: dict[str, Any], exp: int, task_incremental: bool) -> float:
    task = exp if task_incremental else 0
    return float(metrics[f"Top1_Acc_Exp/eval_phase/test_stream/Task{task:03d}/Exp{exp:03d}"])


def _metric(metrics: dict[str, Any], prefix: str) -> float:
    """A stream metric (Avalanche may append a task suffix to the name)."""
    values = [float(v) for k, v in metrics.items() if k.startswith(prefix)]
    if not values:
        raise KeyError(f"metric {prefix} missing from the evaluation results")
    return statistics.fmean(values)


def run_comparison(bench: Benchmark, config: ContinualConfig, out_dir: Path, device: torch.device,
                   on_run: Callable[[int, int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every planned run, in order; ``on_run(done, total, entry)`` after each (progress)."""
    runs = plan(config)
    results = []
    for i, (strategy, mem, seed) in enumerate(runs):
        entry = run_one(bench, config.settings(strategy, mem, seed, bench), config.model, out_dir, device)
        results.append(entry)
        if on_run is not None:
            on_run(i + 1, len(runs), entry)
    return results
