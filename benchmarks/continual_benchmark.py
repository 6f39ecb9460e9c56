"""Continual benchmark: distilled replay vs Avalanche's baselines, over memory sizes and seeds.

Two steps, each writing benchmarks/results/continual_<benchmark>_<step>.{json,md}:

    # 1. tune the baselines on the grids below, at every memory size (seed 0), scored on the
    #    validation share of each experience's training data (never the test set); resumable
    python benchmarks/continual_benchmark.py tune --benchmark split-digits
    # 2. the comparison with the chosen values, every memory size, 3 seeds, scored once on test; resumable
    python benchmarks/continual_benchmark.py compare --benchmark split-digits

Both steps train on the same data (each experience's training images less the validation
share, ``--validation``) with one recipe (``--augment``: every strategy's batches and memory
training). A grid winner on an edge is extended one step beyond it (``--extend-edges`` rounds);
an edge still hit is named in the results with the reason it stopped.

SplitMNIST / SplitCIFAR-10 read the shared mirror: ``--data-dir /work/shared/data``.
What was run on the 2-core CPU for SplitMNIST (full data, ConvNet, 1 epoch/experience)::

    B="--benchmark split-mnist --data-dir /work/shared/data --scratch runs/cb_mnist"
    python benchmarks/continual_benchmark.py tune $B --mem-sizes 10,20 --grid-lr 0.01,0.03 --grid-epochs 1 \
        --mem-batch "" --grid-buffer-lr 0.01 --grid-buffer-epochs 100,300 --tune-strategies replay,gdumb
    python benchmarks/continual_benchmark.py compare $B --mem-sizes 10,20 --seeds 3 \
        --strategies distilled-replay,replay,gdumb,naive,joint

SplitCIFAR-10 at memory 200, on a GPU (data copied into the git-ignored ``.data/``)::

    python benchmarks/continual_benchmark.py tune --benchmark split-cifar10 --data-dir .data --device cuda \
        --mem-sizes 200 --grid-epochs 1,5 --tune-strategies replay,gdumb
    python benchmarks/continual_benchmark.py compare --benchmark split-cifar10 --data-dir .data --device cuda \
        --mem-sizes 200 --seeds 3 --iterations 1000 \
        --strategies naive,joint,replay,gdumb,distilled-replay,distilled-finetune
Everything runs through fedcond.continual (Avalanche's templates and EvaluationPlugin).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

from config_options import add_config_options, command_help  # benchmarks/, beside this file
from fedcond.commands.common import parse_options
from fedcond.commands.continual import command as continual_command
from fedcond.continual.benchmarks import benchmark_defaults, default_model, make_benchmark
from fedcond.continual.report import gains, summarize, write_report
from fedcond.continual.runner import ContinualConfig, run_comparison
from fedcond.continual.strategies import BUFFER_STRATEGIES, MEMORY_STRATEGIES
from fedcond.continual.tuning import SCORE, edges, extend, require_validation, winner
from fedcond.recipe import Recipe
from fedcond.runinfo import resolve_device, run_record, shell_command
from fedcond.stats import Spread

RESULTS = Path(__file__).parent / "results"
# The grids every baseline is tuned over, at every memory size (recorded with the results).
# Experience-trained strategies: lr x epochs per experience, then the memory batch size at
# the best point. Memory-only learners (gdumb): the recipe on the memory.
GRID = {"lr": [0.003, 0.01, 0.03, 0.1], "epochs": [1, 5, 10, 20]}
ICARL_GRID = {"lr": [0.01, 0.03, 0.1], "epochs": [5, 20]}
MEM_BATCH = [64]  # tried at replay's best (lr, epochs); None = the training batch size (32)
# Avalanche's memory strategies, each tuned: the library's memory strategies but fedcond's own
BASELINES = tuple(s for s in MEMORY_STRATEGIES if s not in BUFFER_STRATEGIES)
# the memory training's epochs and rate (its augmentation is the recipe's, as every strategy's)
BUFFER_GRID = {"buffer_lr": [0.01, 0.03, 0.1], "buffer_epochs": [100, 300]}
RESULT_KEYS = (SCORE, "validation_forgetting", "final_average_accuracy", "forgetting")


def _grid(strategy: str) -> dict:
    return dict(BUFFER_GRID if strategy == "gdumb" else ICARL_GRID if strategy == "icarl" else GRID)


def tune(args: argparse.Namespace, bench, device, saved: dict) -> dict:
    """Seed 0, every memory size: the grids above for the baselines; naive and joint (the
    bounds, tuned so that the upper bound is as high as the grid makes it) once, as memory 0.
    Every point is scored on ``bench``'s validation stream (refused otherwise): the test
    images are not in it. A winner on an edge of its grid gets the next value beyond that
    edge, at its other settings, up to ``args.extend_edges`` times; what still sits on an edge
    is recorded in ``saved["edges"]`` with the reason it stopped.

    Resumable: every finished point is in ``saved["grid"]`` (written after each) and is
    not run again."""
    require_validation(bench)
    rows = saved.setdefault("grid", [])
    dropped = [r for r in rows if SCORE not in r]
    if dropped:  # rows of an older tuner were scored on the test stream: never choose with them
        print(f"dropping {len(dropped)} tuning rows scored on the test stream (older tuner)", flush=True)
        rows[:] = [r for r in rows if SCORE in r]
    done = {_point_key(r): r for r in rows}
    saved["edges"] = {}

    def run(strategy: str, mem: int, point: dict) -> dict:
        key = {"strategy": strategy, "mem_size": mem, **point}
        tag = _point_key(key)
        if tag in done:
            return done[tag]
        # a memory-free strategy runs at memory 0 whatever mem_sizes says (it must name one)
        cfg = ContinualConfig(strategies=(strategy,), mem_sizes=(mem or args.mem_list[0],), seeds=(0,),
                              model=args.model, batch_size=args.batch_size, recipe=args.recipe,
                              precision=args.precision, **{k: v for k, v in point.items()})
        r = run_comparison(bench, cfg, Path(args.scratch) / "tune" / f"{strategy}_{mem}_{len(rows)}", device)[0]
        rows.append({**key, SCORE: r["final_average_accuracy"], "validation_forgetting": r["forgetting"]})
        done[tag] = rows[-1]
        print(rows[-1], flush=True)
        args.save(saved)
        return rows[-1]

    for mem in args.mem_list:
        for strategy in args.tune_strategies:
            if strategy not in MEMORY_STRATEGIES and mem != args.mem_list[0]:
                continue  # naive / joint hold no memory: tuned once, as memory 0
            at = mem if strategy in MEMORY_STRATEGIES else 0
            grid = _grid(strategy)
            for point in [dict(zip(grid, v)) for v in itertools.product(*grid.values())]:
                run(strategy, at, point)
            for round_ in range(args.extend_edges + 1):
                own = [r for r in rows if r["strategy"] == strategy and r["mem_size"] == at
                       and "batch_size_mem" not in r]
                grid = {k: sorted({r[k] for r in own}) for k in grid}
                best = winner(own)
                hit = edges(best, grid)
                if not hit:
                    break
                if round_ == args.extend_edges:
                    saved["edges"].setdefault(strategy, {})[str(at)] = [
                        f"{dim} at its {side} edge {best[dim]}: stopped after --extend-edges {args.extend_edges} "
                        "round(s) (CPU budget)" for dim, side in hit]
                    break
                wider, stopped = extend(grid, hit)
                if stopped:
                    saved["edges"].setdefault(strategy, {})[str(at)] = stopped
                added = [(dim, v) for dim in grid for v in wider[dim] if v not in grid[dim]]
                if not added:
                    break
                for dim, value in added:  # the winner's other settings, one step past the edge
                    run(strategy, at, {k: (value if k == dim else best[k]) for k in grid})
            if strategy == "replay":
                top = winner([r for r in rows if r["strategy"] == "replay" and r["mem_size"] == mem
                              and "batch_size_mem" not in r])
                for b in MEM_BATCH:
                    run("replay", mem, {"lr": top["lr"], "epochs": top["epochs"], "batch_size_mem": b})
    saved["best"] = best_points(rows)
    return saved


def _point_key(row: dict) -> str:
    """A tuning row's identity: strategy, memory and grid point (not its results)."""
    return json.dumps({k: v for k, v in row.items() if k not in RESULT_KEYS}, sort_keys=True)


def best_points(rows: list[dict]) -> dict:
    """{strategy: {memory: settings}}: each one's validation argmax (never a test score)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["strategy"], {}).setdefault(str(r["mem_size"]), []).append(r)
    return {
        s: {m: {k: v for k, v in winner(rs).items() if k not in ("strategy", "mem_size", *RESULT_KEYS)}
            for m, rs in ms.items()}
        for s, ms in groups.items()
    }


def run_settings(tuned: dict, strategies: tuple[str, ...], mem: int, defaults: dict) -> dict[str, dict]:
    """Each strategy's settings at memory ``mem`` from the tune step's ``best``: a baseline its
    own best point; naive and joint their own (tuned once, as memory 0) or else replay's
    lr/epochs; the memories of the plugin (distilled and its random / herding controls) replay's
    lr/epochs (their memory training is not tuned: the plugin's defaults).
    Replay untuned at ``mem``: the benchmark's ``defaults`` (e.g. SplitMNIST's 1 epoch, lr 0.01)."""
    replay = tuned.get("replay", {}).get(str(mem), {"lr": defaults["lr"], "epochs": defaults["epochs"]})
    replay = {k: replay[k] for k in ("lr", "epochs")}
    settings = {s: v[str(mem)] for s, v in tuned.items() if str(mem) in v and s in strategies}
    for s in strategies:
        if s in BUFFER_STRATEGIES:
            settings[s] = dict(replay)
        elif s not in MEMORY_STRATEGIES:
            settings[s] = tuned.get(s, {}).get("0") or dict(replay)
    return settings


def tuned_points(path: Path) -> dict:
    """The tuned settings in ``path``: a tune step's results (``best``) or a compare step's, which
    records the points its runs used (``tuned``), so a comparison can be repeated from a clean clone."""
    data = json.loads(path.read_text())
    if "best" in data:
        return data["best"]
    if "tuned" in data:
        return data["tuned"]
    raise SystemExit(f"--tuned {path}: neither a tune step's results (best) nor a compare step's (tuned)")


def compare(args: argparse.Namespace, bench, device, saved: dict) -> dict:
    """Every strategy at every memory size and seed, each baseline with its tuned settings
    for that memory. Ours are not tuned: the plugin's defaults (evaluation-protocol
    recipe on the buffer), replay's tuned lr/epochs while an experience trains."""
    tuned = tuned_points(Path(args.tuned)) if args.tuned else {}
    # which chosen points sat on an edge of their grid (a tune file's own record; a compare file's copy)
    if args.tuned:
        told = json.loads(Path(args.tuned).read_text())
        saved["tuned_edges"] = told.get("edges", told.get("tuned_edges", {}))
    strategies = tuple(args.strategies.split(","))
    # runs of earlier invocations (other strategies or seeds) stay in the results file
    # not a file from an older runner, nor runs from before one recipe and a validation split (unfair)
    runs_by_key = {(r["strategy"], r["mem_size"], r["seed"]): r for r in saved.get("runs", [])
                   if "forgetting" in r and "recipe" in r.get("settings", {})}
    for mem in args.mem_list:
        overrides = run_settings(tuned, strategies, mem, benchmark_defaults(bench.name))
        # naive / joint hold no memory: they run once, with the first memory size
        mem_strats = tuple(s for s in strategies if s in MEMORY_STRATEGIES or mem == args.mem_list[0])
        cfg = ContinualConfig(strategies=mem_strats, mem_sizes=(mem,), seeds=tuple(range(args.seeds)), model=args.model,
                              overrides=overrides, **args.shared)

        def progress(done: int, total: int, e: dict, mem: int = mem) -> None:
            print(f"[mem {mem} {done}/{total}] {e['strategy']} seed {e['seed']}: "
                  f"{e['final_average_accuracy']:.3f} ({e['wall_time_s']:.0f} s)", flush=True)

        def experience_done(tag: str, i: int) -> None:
            # a distilled run can spend half an hour or more per experience on a CPU: say where it is
            print(f"  {tag}: experience {i + 1} of {bench.n_experiences} finished at {time.strftime('%H:%M')}",
                  flush=True)

        # one folder per memory size: the runner resumes finished runs from it
        # runs the results file already holds with these settings are not run again (a fresh clone's scratch)
        for r in run_comparison(bench, cfg, Path(args.scratch) / "compare" / f"m{mem}", device, progress,
                                experience_done, known_runs=list(runs_by_key.values())):
            runs_by_key[(r["strategy"], r["mem_size"], r["seed"])] = r
        runs = sorted(runs_by_key.values(), key=lambda r: (r["mem_size"], r["strategy"], r["seed"]))
        saved.update({"tuned": tuned, "runs": runs, "summary": summarize(runs)})
        args.save(saved)
    out = Path(args.scratch) / "compare"
    paths = write_report(runs, out, {"benchmark": bench.name})
    # the pictures beside the numbers: accuracy vs memory, and the distilled buffers (seed 0)
    pictures = {}
    if "accuracy_vs_memory" in paths:
        pictures["accuracy_vs_memory"] = _copy(
            paths["accuracy_vs_memory"], RESULTS / f"{args.stem}_accuracy_vs_memory.png"
        )
    for mem, src in buffer_pictures(runs, out).items():
        pictures[f"buffer_m{mem}"] = _copy(src, RESULTS / f"{args.stem}_buffer_m{mem}.png")
    saved["plots"] = str(out)
    saved["pictures"] = pictures
    return saved


def buffer_pictures(runs: list[dict], out: Path) -> dict[int, Path]:
    """Each memory size's picture of the distilled-replay buffer (seed 0), found in its compare folder
    under ``out``: the path a run recorded is relative to the directory it ran from, which may not be
    this invocation's (another worktree, an absolute --scratch)."""
    found = {}
    for r in runs:
        if r["strategy"] == "distilled-replay" and r["seed"] == 0 and r.get("buffer_image"):
            src = out / f"m{r['mem_size']}" / "buffers" / Path(r["buffer_image"]).name
            if src.is_file():
                found[r["mem_size"]] = src
    return found


def _copy(src: Path, dst: Path) -> str:
    shutil.copyfile(src, dst)
    return str(dst.relative_to(RESULTS.parent.parent)) if dst.is_relative_to(RESULTS.parent.parent) else str(dst)


def markdown(result: dict, step: str, command: str, record: dict) -> str:
    lines = [
        f"# Continual {step}: {record['benchmark']}",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {record['device_name']}; torch {record['versions']['torch']}, avalanche-lib "
        f"{record['versions']['avalanche-lib']}; "
        f"wall time {record['wall_time_s']:.0f} s.",
        "",
        *([result["note"], ""] if result.get("note") else []),
    ]
    recipe = record.get("recipe")
    if recipe:
        lines += [f"Recipe of every strategy: {Recipe.from_json(recipe).describe(record.get('channels'))} (the "
                  "schedule is that of training from scratch on a memory; an experience's training keeps its rate); "
                  f"validation share {record.get('validation')} of each experience's training images, held out of "
                  "training in both steps.", ""]
    if step == "tune":
        lines += ["Every point is scored on the validation stream (the test images are not in the tuner's "
                  "benchmark); the winner is the validation argmax.", "",
                  "| strategy | memory | settings | validation acc | validation forgetting |", "|---|---|---|---|---|"]
        for r in result["grid"]:
            point = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("strategy", "mem_size", *RESULT_KEYS))
            lines.append(f"| {r['strategy']} | {r['mem_size']} | {point} | {r[SCORE]:.3f} | "
                         f"{r['validation_forgetting']:.3f} |")
        lines += ["", "Chosen per memory (validation argmax):", ""]
        lines += [f"- {s} memory {m}: " + ", ".join(f"{k} {v}" for k, v in p.items())
                  for s, ms in result.get("best", best_points(result["grid"])).items() for m, p in ms.items()]
        lines += edge_lines(result.get("edges", {}))
    else:
        runs = result.get("runs", [])
        lines += ["Test accuracy, measured once per run for the setting chosen on validation. Mean ± sample std "
                  "(95 % t interval of the mean, n seeds).", "",
                  "| strategy | memory | seeds | final avg acc | forgetting | distill s / experience | "
                  "wall min / run | peak RSS GiB |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in sorted(result["summary"], key=lambda s: (s["mem_size"], s["strategy"])):
            own = [r for r in runs if (r["strategy"], r["mem_size"]) == (s["strategy"], s["mem_size"])]
            secs = [t for r in own for t in (r.get("distill_seconds_per_experience") or [])]
            cost = f"{statistics.fmean(secs):.1f}" if secs else ""
            walls = [r["wall_time_s"] for r in own if "wall_time_s" in r]
            wall = f"{statistics.fmean(walls) / 60:.1f}" if walls else ""
            peaks = [r["peak_rss_mib"] for r in own if r.get("peak_rss_mib")]  # runs from before it was recorded: blank
            peak = f"{max(peaks) / 1024:.1f}" if peaks else ""
            acc = (Spread(**s["final_average_accuracy_spread"]).format() if "final_average_accuracy_spread" in s
                   else f"{s['final_average_accuracy_mean']:.3f} ± {s['final_average_accuracy_std']:.3f}")
            lines.append(
                f"| {s['strategy']} | {s['mem_size']} | {len(s['seeds'])} | {acc} | "
                f"{s['forgetting_mean']:.3f} ± {s['forgetting_std']:.3f} | {cost} | {wall} | {peak} |"
            )
        lines += ["", *goal_lines(result["summary"])]
        lines += gain_lines(runs)
        notes = {s["strategy"]: s["on_purpose"] for s in result["summary"] if s.get("on_purpose")}
        if notes:
            lines += ["", "Where a method differs from the others on purpose:", ""]
            lines += [f"- {n}" for n in notes.values()]
        lines += ["", "Baselines: each memory size's validation-chosen point of the tuning grid (seed 0; the "
                  "`_tune.md` file beside this one; naive and joint: their own chosen point where the grid has one, "
                  "else replay's); the plugin's memories (distilled and its random / herding controls, same mode, "
                  "budget and formation): the plugin's memory training, not tuned, with replay's chosen lr/epochs "
                  "while an experience trains."]
        lines += edge_lines(result.get("tuned_edges", {}))
        lines += [f"\n![{name}]({Path(path).name})" for name, path in result.get("pictures", {}).items()]
    return "\n".join(lines) + "\n"


def edge_lines(found: dict) -> list[str]:
    """The grid winners still on an edge of their grid, and why the grid stopped there."""
    items = [f"- {s} memory {m}: {why}" for s, ms in found.items() for m, whys in ms.items() for why in whys]
    return ["", "Winners on an edge of their grid:", "", *items] if items else []


def gain_lines(runs: list[dict]) -> list[str]:
    """The distilled memories' gains: mean of per-seed paired differences with its 95 % interval."""
    found = gains(runs)
    if not found:
        return []
    out = ["", "Gains of the distilled memories (points; mean of per-seed paired differences, 95 % interval; "
           "holds: interval above 0):", "", "| memory | distilled | over | gain | holds |", "|---|---|---|---|---|"]
    for g in sorted(found, key=lambda g: (g["mem_size"], g["strategy"], -g["gain"]["mean"])):
        out.append(f"| {g['mem_size']} | {g['strategy']} | {g['over']} | "
                   f"{Spread(**g['gain']).format(scale=100, spec='.1f')} | {'yes' if g['holds'] else 'no'} |")
    return out


def goal_lines(summary: list[dict]) -> list[str]:
    """The issues' goals, per memory: the best fedcond strategy against tuned replay (+10
    points), against the best tuned baseline of all (replay, GDumb, iCaRL, DER), and the
    share of the replay -> joint gap it closes."""
    acc = {(s["strategy"], s["mem_size"]): s["final_average_accuracy_mean"] for s in summary}
    joint = acc.get(("joint", 0))
    rows = []
    for mem in sorted({m for (_, m) in acc if m > 0}):
        ours = [(a, s) for (s, m), a in acc.items() if m == mem and s.startswith("distilled")]  # not the controls
        replay = acc.get(("replay", mem))
        if not ours or replay is None:
            continue
        best, name = max(ours)
        rival, rival_name = max((a, s) for (s, m), a in acc.items() if m == mem and s in BASELINES)
        share = f"{(best - replay) / (joint - replay):.2f}" if joint is not None and joint > replay else ""
        rows.append(f"| {mem} | {name} | {best:.3f} | {replay:.3f} | {100 * (best - replay):+.1f} pts | "
                    f"{rival_name} {rival:.3f} | {100 * (best - rival):+.1f} pts | {share} |")
    out = []
    if rows:  # none where no memory size has both a distilled strategy and replay: no goal to judge
        out = ["| memory | best fedcond | acc | tuned replay | gain | best tuned baseline | gain over it | "
               "share of replay→joint gap closed |",
               "|---|---|---|---|---|---|---|---|", *rows]
    if joint is not None:
        out += ["", f"Joint (upper bound): {joint:.3f}."]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("tune", "compare"))
    p.add_argument("--benchmark", default="split-digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-fraction", type=float, default=1.0)
    p.add_argument("--model", default=None)
    p.add_argument("--tune-strategies", default="replay,gdumb,icarl,der,der++,joint")
    p.add_argument("--augment", default="auto",
                   help="the recipe's augmentation, every strategy's (auto, none or DSA families such as crop_flip)")
    p.add_argument("--validation", type=float, default=0.1,
                   help="share of each experience's training images held out: tune scores it, compare leaves it out")
    p.add_argument("--extend-edges", type=int, default=1,
                   help="rounds of extending a grid past an edge its winner sits on (then the edge is reported)")
    p.add_argument("--grid-lr", default=None, help="comma list replacing GRID's learning rates (smaller CPU runs)")
    p.add_argument("--grid-epochs", default=None, help="comma list replacing GRID's epochs per experience")
    p.add_argument("--mem-batch", default=None, help="comma list replacing MEM_BATCH ('' = none)")
    p.add_argument("--grid-buffer-lr", default=None, help="comma list replacing BUFFER_GRID's learning rates")
    p.add_argument("--grid-buffer-epochs", default=None, help="comma list replacing BUFFER_GRID's epochs")
    p.add_argument("--grid-buffer-augment", default=None,
                   help="retired (issue 38): the memory training's augmentation is the recipe's (--augment), every "
                   "strategy's; accepted so that older results pages' commands parse, refused unless it names the "
                   "recipe's augmentation")
    p.add_argument(
        "--tuned", default=None,
        help="tune step's JSON, or a compare step's (the points its runs used) (default: "
        "results/continual_<benchmark>_tune.json if present)"
    )
    p.add_argument(
        "--strategies", default="naive,joint,replay,gdumb,icarl,der,der++,distilled-replay,distilled-finetune,"
        "random-replay,random-finetune,herding-replay,herding-finetune"
    )
    p.add_argument("--mem-sizes", default="10,20,50,100,200")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 of the comparison")
    # the runs' settings: ContinualConfig's fields (flag, type, default) with `fedcond continual`'s help
    shared = add_config_options(
        p, ContinualConfig, ["batch_size", "method", "iterations", "rebalance", "buffer_epochs", "precision"],
        helps={**command_help(continual_command),
               "iterations": "distillation iterations of the memory (unset: the memory's own default)",
               "buffer_epochs": "epochs of training on the memory after each experience (gdumb unless tuned, "
                                "distilled-replay, distilled-finetune)"},
    )
    p.add_argument("-o", "--option", action="append", default=None, metavar="KEY=VALUE",
                   help="distillation option of the memory, as `fedcond continual -o` (repeatable; e.g. factor=2 "
                   "stores 2x2 mosaics, each counted as one image of the budget)")
    p.add_argument("--out-stem", default=None, help="results file stem (default continual_<benchmark>)")
    p.add_argument("--note", default=None,
                   help="how the results were made, printed under the command (kept in the JSON until replaced), "
                   "e.g. that the runs came from several invocations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--scratch", default="runs/continual_benchmark")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.model = args.model or default_model(args.benchmark)
    # tune: the validation share is the evaluation stream, the test images are not loaded into it;
    # compare: the same share is held out of training and the test stream is scored
    bench = make_benchmark(args.benchmark, data_dir=args.data_dir, train_fraction=args.train_fraction,
                           validation=args.validation, evaluate_on="validation" if args.step == "tune" else "test")
    args.recipe = Recipe(augment=args.augment)
    recipe_augment = args.recipe.augment_strategy(bench.data.image_shape[0]) or ""
    if args.grid_buffer_augment is not None and set(args.grid_buffer_augment.split(",")) != {recipe_augment}:
        raise SystemExit(f"--grid-buffer-augment {args.grid_buffer_augment!r}: augmentation is no grid dimension "
                         f"since issue 38; every strategy trains with the recipe's ({recipe_augment or 'none'}, "
                         "--augment)")
    stem = args.stem = args.out_stem or f"continual_{bench.name}" + (
        f"_frac{args.train_fraction:g}" if args.train_fraction < 1 else ""
    )
    args.shared = {k: getattr(args, k) for k in shared}
    args.shared["recipe"] = args.recipe
    if args.option:
        args.shared["distill_options"] = parse_options(args.option)
    if args.step == "compare" and args.tuned is None and (RESULTS / f"{stem}_tune.json").exists():
        args.tuned = str(RESULTS / f"{stem}_tune.json")
    args.mem_list = [int(m) for m in args.mem_sizes.split(",")]
    if args.grid_lr:
        GRID["lr"] = ICARL_GRID["lr"] = [float(v) for v in args.grid_lr.split(",")]
    if args.grid_epochs:
        GRID["epochs"] = ICARL_GRID["epochs"] = [int(v) for v in args.grid_epochs.split(",")]
    if args.mem_batch is not None:
        MEM_BATCH[:] = [int(v) for v in args.mem_batch.split(",") if v]
    if args.grid_buffer_lr:
        BUFFER_GRID["buffer_lr"] = [float(v) for v in args.grid_buffer_lr.split(",")]
    if args.grid_buffer_epochs:
        BUFFER_GRID["buffer_epochs"] = [int(v) for v in args.grid_buffer_epochs.split(",")]
    args.tune_strategies = args.tune_strategies.split(",")
    device = resolve_device(args.device)
    start = time.perf_counter()
    path = RESULTS / f"{stem}_{args.step}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = json.loads(path.read_text()) if path.exists() else {}
    # a resumed or extended step (more strategies, seeds, or only a new --note) adds its time to
    # that of the invocations whose runs the file already holds
    earlier = float(saved.get("wall_time_s", 0.0))
    if args.note is not None:
        saved["note"] = args.note

    def save(result: dict) -> None:
        # the command as a shell takes it back: "python" first, empty and spaced values quoted
        record = run_record(device, command=shell_command(sys.argv, drop=("--note",)), benchmark=bench.name,
                            wall_time_s=earlier + time.perf_counter() - start, recipe=args.recipe.to_json(),
                            channels=bench.data.image_shape[0], validation=args.validation,
                            evaluated_on=bench.evaluated_on,
                            args={k: v for k, v in vars(args).items() if k != "save"})
        path.write_text(json.dumps({**result, **record}, indent=1, default=str) + "\n")
        (RESULTS / f"{stem}_{args.step}.md").write_text(markdown(result, args.step, record["command"], record))

    args.save = save
    result = tune(args, bench, device, saved) if args.step == "tune" else compare(args, bench, device, saved)
    save(result)
    print((RESULTS / f"{stem}_{args.step}.md").read_text())


if __name__ == "__main__":
    main()
