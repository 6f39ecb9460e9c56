"""Results of a continual comparison: results.json, accuracy-matrix plots, accuracy vs memory.

``results.json`` is ``{"recipe_warnings": [...], "runs": [...], "summary": [...], "gains": [...],
...}``: ``recipe_warnings`` comes first and is non-empty only when the user asked for
unequal recipes (``--unequal-recipe``); one ``runs`` entry per (strategy, memory, seed) with
``final_average_accuracy``, ``forgetting`` (fractions) and ``accuracy_matrix`` (row i:
accuracy on every test experience after training experience i); ``summary`` per (strategy,
memory): mean, sample std and 95 % interval over seeds (:mod:`fedcond.stats`) and the recipe
that trained it; ``gains``: each distilled memory against every other strategy at its memory,
the mean of per-seed paired differences with its interval.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from fedcond.continual.strategies import DISTILLED_MODES, ON_PURPOSE
from fedcond.recipe import Recipe
from fedcond.runinfo import write_json
from fedcond.stats import Spread, paired_gain, spread


def _recipe_line(run: dict[str, Any]) -> str:
    """The recipe a run trained with, as one line (older results files: unknown)."""
    settings = run.get("settings") or {}
    recipe = settings.get("recipe")
    if not isinstance(recipe, dict):
        return "recipe not recorded"
    return Recipe.from_json(recipe).describe(settings.get("channels"))


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (strategy, memory): final average accuracy and forgetting over seeds (mean, sample
    std: 0.0 for one seed, and ``*_spread`` with the 95 % interval), and the recipe."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["strategy"], r["mem_size"]), []).append(r)
    out = []
    for (strategy, mem), rs in groups.items():
        acc = spread([r["final_average_accuracy"] for r in rs])
        fgt = spread([r["forgetting"] for r in rs])
        out.append({
            "strategy": strategy, "mem_size": mem, "seeds": [r.get("seed") for r in rs],
            "final_average_accuracy_mean": acc.mean,
            "final_average_accuracy_std": acc.std or 0.0,
            "final_average_accuracy_spread": acc.to_json(),
            "forgetting_mean": fgt.mean,
            "forgetting_std": fgt.std or 0.0,
            "recipe": _recipe_line(rs[0]),
            **({"on_purpose": ON_PURPOSE[strategy]} if strategy in ON_PURPOSE else {}),
        })
    return out


def gains(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each distilled memory's gain over every other strategy at its memory size (controls
    and baselines): the spread of per-seed paired differences over the seeds both ran."""
    acc = {(r["strategy"], r["mem_size"], r["seed"]): r["final_average_accuracy"] for r in runs
           if "final_average_accuracy" in r}
    cells = sorted({(s, m) for s, m, _ in acc})
    out = []
    for treated, mem in cells:
        if treated not in DISTILLED_MODES:
            continue
        for other, other_mem in cells:
            if other_mem != mem or other == treated:
                continue
            seeds = sorted(s for (a, m, s) in acc if (a, m) == (treated, mem) and (other, mem, s) in acc)
            if not seeds:
                continue
            gain = paired_gain([acc[treated, mem, s] for s in seeds], [acc[other, mem, s] for s in seeds])
            out.append({"strategy": treated, "over": other, "mem_size": mem, "seeds": seeds, "gain": gain.to_json(),
                        "holds": gain.above_zero})
    return out


def report_lines(runs: list[dict[str, Any]], recipe_warnings: list[str] = ()) -> list[str]:
    """The printed report: any unequal-recipe warning first, then each (strategy, memory)
    with its spread over seeds and its recipe, then the distilled memories' paired gains."""

    lines = [*recipe_warnings]
    lines.append(f"{'strategy':<19}{'memory':>7}  {'final avg acc: mean ± sample std (95 % CI, n)':<50}"
                 f"{'forgetting':>16}  recipe")
    for s in summarize(runs):
        acc = Spread(**s["final_average_accuracy_spread"]).format()
        note = f"; {s['on_purpose']}" if "on_purpose" in s else ""
        lines.append(f"{s['strategy']:<19}{s['mem_size']:>7}  {acc:<50}{s['forgetting_mean']:>8.3f} ± "
                     f"{s['forgetting_std']:.3f}  {s['recipe']}{note}")
    found = gains(runs)
    if found:
        lines += ["", "gains of the distilled memories (mean of per-seed paired differences, points; holds: "
                  "interval above 0)"]
        for g in found:
            text = Spread(**g["gain"]).format(scale=100, spec=".1f")
            lines.append(f"  {g['strategy']} over {g['over']} at memory {g['mem_size']}: {text}"
                         f"{'  holds' if g['holds'] else ''}")
    return lines


def mean_matrix(runs: list[dict[str, Any]]) -> list[list[float]]:
    """Element-wise mean of several runs' accuracy matrices (same shape)."""
    mats = [r["accuracy_matrix"] for r in runs]
    return [[statistics.fmean(m[i][j] for m in mats) for j in range(len(mats[0][i]))] for i in range(len(mats[0]))]


def plot_accuracy_matrices(panels: list[tuple[str, list[list[float]]]], path: Path) -> Path:
    """One heat map per strategy, side by side: rows = after training experience i,
    columns = test experience j (joint training has a single row)."""
    import matplotlib  # noqa: PLC0415  (matplotlib only when a figure is drawn: seconds to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (matplotlib only when a figure is drawn: seconds to import)

    cols = max(len(m[0]) for _, m in panels)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(0.4 + (0.6 * cols + 0.8) * len(panels), 0.9 + 0.6 * cols), squeeze=False
    )
    for ax, (title, matrix) in zip(axes[0], panels):
        ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=7)
        ax.set_xticks(range(len(matrix[0])))
        ax.set_yticks(range(len(matrix)))
        ax.set_xlabel("test experience", fontsize=8)
        ax.set_title(title, fontsize=8)
    axes[0][0].set_ylabel("after training experience", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_memory(summary: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Final average accuracy against memory size; memory-free strategies as dashed lines."""
    import matplotlib  # noqa: PLC0415  (matplotlib only when a figure is drawn: seconds to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (matplotlib only when a figure is drawn: seconds to import)

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in dict.fromkeys(s["strategy"] for s in summary):
        pts = sorted((s["mem_size"], s["final_average_accuracy_mean"], s["final_average_accuracy_std"])
                     for s in summary if s["strategy"] == strategy)
        if len(pts) == 1 and pts[0][0] == 0:
            ax.axhline(
                pts[0][1], linestyle="--", linewidth=1, label=strategy, color="gray" if strategy == "naive" else "black"
            )
        else:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=3,
                label=strategy,
            )
    ax.set_xscale("log")
    ax.set_xlabel("memory size (images)")
    ax.set_ylabel("final average accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(runs: list[dict[str, Any]], out_dir: Path, record: dict[str, Any],
                 recipe_warnings: list[str] = ()) -> dict[str, Path]:
    """Write results.json (``recipe_warnings`` its first key) and the plots; return the paths written.

    ``accuracy_matrix.png`` has one panel per strategy (mean over seeds, at the largest
    memory size); ``accuracy_vs_memory.png`` is drawn when several memory sizes were run.
    """

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    results = {"recipe_warnings": list(recipe_warnings), **record, "runs": runs, "summary": summary,
               "gains": gains(runs)}
    paths = {"results": write_json(out_dir / "results.json", results)}
    panels = []
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        rs = [r for r in runs if r["strategy"] == strategy]
        mem = max(r["mem_size"] for r in rs)
        rs = [r for r in rs if r["mem_size"] == mem]
        panels.append((strategy + (f", mem {mem}" if mem else ""), mean_matrix(rs)))
    paths["accuracy_matrix"] = plot_accuracy_matrices(panels, out_dir / "accuracy_matrix.png")
    if len({r["mem_size"] for r in runs if r["mem_size"] > 0}) > 1:
        paths["accuracy_vs_memory"] = plot_accuracy_vs_memory(
            summary, out_dir / "accuracy_vs_memory.png", record.get("benchmark", "")
        )
    return paths
