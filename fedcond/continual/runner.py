"""The comparison runner behind ``fedcond continual``: strategies x memory sizes x seeds.

Every run trains one of Avalanche's templates on the benchmark's train stream, one
experience at a time, and after each experience evaluates on the whole test stream with
Avalanche's ``EvaluationPlugin`` (accuracy per experience and stream, forgetting; text and
CSV loggers into the output folder). Row i of the accuracy matrix is the accuracy on each
test experience after training on experience i. ``joint`` trains once on the whole stream,
so its matrix has one row and its forgetting is 0. Forgetting is computed from the matrix
(:func:`forgetting`, Avalanche's definition), so a resumed run reports the same value.
Finished runs and finished experiences are kept in the output folder and a run started
again continues after them (:mod:`fedcond.continual.resume`).

Randomness: model weights come from ``get_model(seed=...)``; Avalanche's data loaders
shuffle with torch's global generator, so each run seeds it from its ``seed`` first.
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.evaluation.metrics.ram_usage import MaxRAM
from avalanche.logging import CSVLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin

from fedcond.continual.benchmarks import Benchmark
from fedcond.continual.buffer import DistilledBuffer
from fedcond.continual.buffer_training import BufferTraining
from fedcond.continual.resume import RunStore, can_checkpoint, capture, restore, same_settings
from fedcond.continual.strategies import MEMORY_STRATEGIES, STRATEGIES, StrategySettings, build_strategy, replay_buffer
from fedcond.errors import FedcondError
from fedcond.models import get_model
from fedcond.precision import DEFAULT_PRECISION, check_precision, resolve_precision
from fedcond.recipe import Recipe, check_same_recipe
from fedcond.visualize import save_grid

RECIPE_FIELDS = ("augment", "momentum", "weight_decay", "schedule")  # an override of one makes the recipes unequal
OVERRIDABLE = ("lr", "epochs", "batch_size_mem", "buffer_epochs", "buffer_lr", "der_alpha", "der_beta", *RECIPE_FIELDS)


@dataclass
class ContinualConfig:
    """One comparison: which strategies, memories and seeds, and the shared training settings.

    ``recipe`` (:class:`fedcond.recipe.Recipe`) trains every strategy: its momentum and
    weight decay in every optimiser, its augmentation on every training mini-batch and in
    the training on a memory. ``overrides`` holds per-strategy tuned values, e.g.
    ``{"gdumb": {"epochs": 10}}`` (keys in ``OVERRIDABLE``); everything else is shared.
    An override of a recipe field (``augment``, ``momentum``, ``weight_decay``, ``schedule``)
    gives that strategy another recipe: refused unless ``unequal_recipe``, and then
    ``recipe_warnings`` holds the lines a report puts first. ``buffer_epochs`` /
    ``buffer_lr`` are the epochs and rate of the strategies that train on their memory
    (gdumb, ``*-replay``, ``*-finetune``).
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
    rebalance: str = "nested"
    buffer_epochs: int = 300
    buffer_lr: float = 0.01
    recipe: Recipe = field(default_factory=Recipe)
    unequal_recipe: bool = False  # allow per-strategy recipe overrides (reports then say so first)
    precision: str = DEFAULT_PRECISION  # every strategy's training and the distillation (fedcond.precision)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    recipe_warnings: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        check_precision(self.precision, "--precision")
        if not isinstance(self.recipe, Recipe):  # a TOML table or a results file's record
            self.recipe = Recipe.from_json(self.recipe)
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise FedcondError(f"unknown strategy {', '.join(unknown) or '(none)'}: use any of {', '.join(STRATEGIES)}")
        if any(m < 1 for m in self.mem_sizes) or not self.mem_sizes:
            raise FedcondError("--mem-size must be one or more integers >= 1")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise FedcondError("epochs and batch size must be >= 1 and lr > 0")
        BufferTraining(epochs=self.buffer_epochs, lr=self.buffer_lr)  # fail before any run
        for name, values in self.overrides.items():
            bad = set(values) - set(OVERRIDABLE)
            if name not in STRATEGIES or bad:
                raise FedcondError(
                    f"override for {name!r} {sorted(bad)}: only {', '.join(OVERRIDABLE)} of a known strategy"
                )
        self.recipe_warnings = check_same_recipe(self.recipes(), allow_unequal=self.unequal_recipe)

    def recipe_of(self, strategy: str) -> Recipe:
        """The recipe ``strategy`` trains with: the shared one, with any recipe field it overrides."""
        own = {k: v for k, v in self.overrides.get(strategy, {}).items() if k in RECIPE_FIELDS}
        return replace(self.recipe, **own) if own else self.recipe

    def recipes(self) -> dict[str, Recipe]:
        """Every compared strategy's recipe (one and the same unless overridden)."""
        return {s: self.recipe_of(s) for s in self.strategies}

    def settings(self, strategy: str, mem_size: int, seed: int, bench: Benchmark) -> StrategySettings:
        """The resolved settings of one run (shared values, then the strategy's overrides)."""
        base = dict(name=strategy, mem_size=mem_size, lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                    batch_size_mem=self.batch_size_mem, method=self.method, ipc=self.ipc, iterations=self.iterations,
                    distill_model=self.model, distill_options=dict(self.distill_options), rebalance=self.rebalance,
                    buffer_epochs=self.buffer_epochs, buffer_lr=self.buffer_lr, recipe=self.recipe_of(strategy),
                    channels=bench.data.image_shape[0], precision=self.precision,
                    num_classes=bench.data.num_classes, mean=bench.data.mean, std=bench.data.std, seed=seed)
        base.update({k: v for k, v in self.overrides.get(strategy, {}).items() if k not in RECIPE_FIELDS})
        return StrategySettings(**base)


def plan(config: ContinualConfig) -> list[tuple[str, int, int]]:
    """(strategy, mem_size, seed) of every run; memory-free strategies run once per seed (mem 0)."""
    runs = []
    for strategy in config.strategies:
        mems = config.mem_sizes if strategy in MEMORY_STRATEGIES else (0,)
        runs += [(strategy, m, s) for m in mems for s in config.seeds]
    return runs


@contextmanager
def open_run_log(logs: Path, tag: str) -> Iterator[tuple[Any, Path]]:
    """The run's text log (appended to: a resumed run starts with a marker line, after what the
    earlier invocations wrote) and a folder for Avalanche's CSV logs, which open their files
    for writing: a resumed run gets its own ``resumed-<n>`` subfolder, so nothing an earlier
    invocation logged is overwritten."""
    csv_folder = logs / tag
    if any(csv_folder.glob("*.csv")):
        n = 1
        while (csv_folder / f"resumed-{n}").exists():
            n += 1
        csv_folder = csv_folder / f"resumed-{n}"
    with open(logs / f"{tag}.txt", "a") as text_log:
        if text_log.tell() > 0:
            text_log.write(f"\n=== resumed {time.strftime('%Y-%m-%d %H:%M:%S')}: the lines below are this "
                           f"invocation's (CSV logs in {csv_folder.relative_to(logs)}) ===\n")
            text_log.flush()
        yield text_log, csv_folder


def run_one(bench: Benchmark, settings: StrategySettings, model_name: str, out_dir: Path,
            device: torch.device, on_experience: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Train and evaluate one strategy; return its ``runs`` entry for results.json.

    Resumes from the run's experience checkpoint in ``out_dir`` when there is one (see
    :mod:`fedcond.continual.resume`); ``on_experience(tag, i)`` is called after experience
    i is trained, evaluated and checkpointed.
    """
    tag = run_tag(settings)
    recorded = _recorded_settings(settings, bench)
    store = RunStore(out_dir)
    torch.manual_seed(settings.seed)  # Avalanche's loaders shuffle with the global generator
    c, h, w = bench.data.image_shape
    model = get_model(model_name, c, bench.data.num_classes, (h, w), seed=settings.seed)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    joint = settings.name == "joint"
    with open_run_log(logs, tag) as (text_log, csv_folder):
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            forgetting_metrics(experience=True, stream=True),
            loggers=[TextLogger(text_log), CSVLogger(log_folder=str(csv_folder))],
        )
        strategy = build_strategy(settings, model, evaluator, device)
        checkpointing = not joint and can_checkpoint(strategy)
        saved = store.load_experience(tag, recorded) if checkpointing else None
        rows: list[list[float]] = saved["rows"] if saved else []
        stream_acc: float | None = saved["stream_accuracy"] if saved else None
        earlier = float(saved["wall_time_s"]) if saved else 0.0
        earlier_peak = float(saved.get("peak_rss_mib", 0.0)) if saved else 0.0
        if saved:
            restore(strategy, saved)
        start = time.perf_counter()
        train, test = bench.scenario.train_stream, bench.scenario.test_stream
        steps = [train] if joint else list(train)
        # Avalanche 0.6's own ReplayPlugin/GDumb call its deprecated ``update``: not ours to fix.
        # Its decorator forces these warnings past any filter, so record them instead of printing.
        with warnings.catch_warnings(record=True), _peak_memory() as ram:
            for i in range(len(rows), len(steps)):
                strategy.train(steps[i])
                metrics = strategy.eval(test)
                rows.append([_exp_accuracy(metrics, exp, bench.task_incremental) for exp in range(len(test))])
                stream_acc = _metric(metrics, "Top1_Acc_Stream/eval_phase/test_stream")
                if checkpointing:
                    store.save_experience(
                        tag,
                        recorded,
                        {
                            **capture(strategy),
                            "rows": rows,
                            "stream_accuracy": stream_acc,
                            "wall_time_s": earlier + time.perf_counter() - start,
                            "peak_rss_mib": max(earlier_peak, ram.result()),
                        },
                    )
                if on_experience is not None:
                    on_experience(tag, i)
        wall = earlier + time.perf_counter() - start
    buffer = replay_buffer(strategy)
    pictures = _save_buffer(buffer, out_dir / "buffers", tag)
    return {
        "strategy": settings.name,
        "mem_size": settings.mem_size,
        "seed": settings.seed,
        "final_average_accuracy": statistics.fmean(rows[-1]),
        "stream_accuracy": stream_acc,
        "forgetting": 0.0 if joint else forgetting(rows),
        "accuracy_matrix": rows,
        # images the memory stores (a mosaic counts once), and the images replay trains on
        "buffer_images": stored_images(buffer),
        "buffer_training_images": len(buffer.buffer) if buffer is not None else None,
        "buffer_bytes": getattr(buffer, "nbytes", None),
        # distilled strategies: seconds each experience's distillation into the buffer took
        "distill_seconds_per_experience": getattr(buffer, "distill_seconds", None),
        "settings": recorded,
        "wall_time_s": wall,
        # sampled every 0.5 s; a resumed run: the most of every invocation that ran part of it
        "peak_rss_mib": max(earlier_peak, ram.result()),
        **pictures,
    }


def stored_images(buffer: Any) -> int | None:
    """Images a storage policy holds against its budget: a distilled buffer's stored images
    (a mosaic counts once, though replay sees its tiles), else its dataset's length."""
    if buffer is None:
        return None
    if isinstance(buffer, DistilledBuffer):
        return sum(buffer.class_counts().values())
    return len(buffer.buffer)


@contextmanager
def _peak_memory() -> Iterator[MaxRAM]:
    """Avalanche's own sampler of this process's resident memory (MiB, every 0.5 s) over the
    block -- training, the memory's distillation and evaluation alike; stopped also on an error.
    Its ``result()`` stays readable after the block."""
    ram = MaxRAM(every=0.5)
    ram.start_thread()
    try:
        yield ram
    finally:
        ram.stop_thread()


def _save_buffer(buffer: Any, folder: Path, tag: str) -> dict[str, str]:
    """A distilled buffer after the last experience: its set and its picture (one row per class)."""
    if not isinstance(buffer, DistilledBuffer) or not buffer.entries:
        return {}

    sset = buffer.synthetic_set()
    folder.mkdir(parents=True, exist_ok=True)
    sset.save(folder / f"{tag}.safetensors")
    save_grid(sset, folder / f"{tag}.png", max_per_class=20)
    return {"buffer_file": str(folder / f"{tag}.safetensors"), "buffer_image": str(folder / f"{tag}.png")}


def run_tag(settings: StrategySettings) -> str:
    """The run's file name stem: ``<strategy>_m<memory>_s<seed>``."""
    return f"{settings.name}_m{settings.mem_size}_s{settings.seed}"


def _recorded_settings(settings: StrategySettings, bench: Benchmark) -> dict[str, Any]:
    """The run's settings as recorded (and compared on resume), with the data it was scored on."""
    values = {k: v for k, v in asdict(settings).items() if k not in ("mean", "std")}
    values.update(evaluated_on=bench.evaluated_on, validation=bench.validation)
    return json.loads(json.dumps(values, default=str))


def forgetting(rows: list[list[float]]) -> float:
    """Avalanche's stream forgetting from an accuracy matrix: the mean over every experience
    but the last of (accuracy right after training it) - (accuracy at the end); 0 for one row."""
    last = len(rows) - 1
    drops = [rows[k][k] - rows[last][k] for k in range(min(last, len(rows[0])))]
    return statistics.fmean(drops) if drops else 0.0


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
                   on_run: Callable[[int, int, dict[str, Any]], None] | None = None,
                   on_experience: Callable[[str, int], None] | None = None,
                   known_runs: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Every planned run, in order; ``on_run(done, total, entry)`` after each (progress).

    Runs already finished in ``out_dir`` with the same settings are taken from their files,
    and an interrupted run continues after its last finished experience (``resume``).
    ``known_runs``: entries finished elsewhere (a results file of an earlier invocation), each
    taken, and saved to ``out_dir``, for the planned run with exactly its settings.
    """
    runs = plan(config)
    store = RunStore(out_dir)
    results = []
    for i, (strategy, mem, seed) in enumerate(runs):
        settings = config.settings(strategy, mem, seed, bench)
        settings.precision = resolve_precision(settings.precision, device)  # recorded as it runs, never "auto"
        recorded = _recorded_settings(settings, bench)
        entry = store.finished(run_tag(settings), recorded)
        if entry is None:
            entry = next((k for k in known_runs if same_settings(k.get("settings"), recorded)), None)
            if entry is None:
                entry = run_one(bench, settings, config.model, out_dir, device, on_experience)
            store.save_finished(run_tag(settings), entry)
        results.append(entry)
        if on_run is not None:
            on_run(i + 1, len(runs), entry)
    return results
