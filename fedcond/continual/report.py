"""Results of a continual comparison: results.json, accuracy-matrix plots, accuracy vs memory.

``results.json`` is ``{"runs": [...], "summary": [...], ...}``: one ``runs`` entry per
(strategy, memory, seed) with ``final_average_accuracy``, ``forgetting`` (fractions) and
``accuracy_matrix`` (row i: accuracy on every test experience after training experience
i); ``summary`` has mean and std over seeds per (strategy, memory).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of final average accuracy and forgetting, per (strategy, memory)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["strategy"], r["mem_size"]), []).append(r)
    out = []
    for (strategy, mem), rs in groups.items():
        acc = [r["final_average_accuracy"] for r in rs]
        fgt = [r["forgetting"] for r in rs]
        out.append({
            "strategy": strategy, "mem_size": mem, "seeds": [r.get("seed") for r in rs],
            "final_average_accuracy_mean": statistics.fmean(acc),
            "final_average_accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "forgetting_mean": statistics.fmean(fgt),
            "forgetting_std": statistics.stdev(fgt) if len(fgt) > 1 else 0.0,
        })
    return out


def mean_matrix(runs: list[dict[str, Any]]) -> list[list[float]]:
    """Element-wise mean of several runs' accuracy matrices (same shape)."""
    mats = [r["accuracy_matrix"] for r in runs]
    return [[statistics.fmean(m[i][j] for m in mats) for j in range(len(mats[0][i]))] for i in range(len(mats[0]))]


def plot_accuracy_matrices(panels: list[tuple[str, list[list[float]]]], path: Path) -> Path:
    """One heat map per strategy, side by side: rows = after training experience i,
    columns = test experience j (joint training has a single row)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

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
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

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


def write_report(runs: list[dict[str, Any]], out_dir: Path, record: dict[str, Any]) -> dict[str, Path]:
    """Write results.json and the plots; return the paths written.

    ``accuracy_matrix.png`` has one panel per strategy (mean over seeds, at the largest
    memory size); ``accuracy_vs_memory.png`` is drawn when several memory sizes were run.
    """
    from fedcond.runinfo import write_json  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs)
    paths = {"results": write_json(out_dir / "results.json", {**record, "runs": runs, "summary": summary})}
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
