"""Reports of a federated comparison: results.json, accuracy-vs-bytes plot, tables, histograms.

``results.json`` is the contract ``{"runs": [{"strategy": ..., "rounds": [{"round": 1,
"accuracy": 0.91, "upload_bytes": ..., "download_bytes": ...}, ...]}, ...]}`` — accuracy a
fraction, bytes cumulative up to that round — plus the run's settings, the centralised
reference and provenance fields beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from fedcond.runinfo import write_json


def write_results(out: Path, runs: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """``out/results.json`` with ``runs`` first (the contract) and ``meta`` fields after."""
    return write_json(out / "results.json", {"runs": runs, **meta})


def _mb(n: int | float) -> float:
    return n / 2**20


def markdown_table(runs: list[dict[str, Any]], reference: dict[str, Any] | None = None) -> str:
    """One row per strategy: rounds, final accuracy, cumulative upload/download MB, losses."""
    lines = ["| strategy | rounds | final accuracy | upload MB | download MB | total MB | clients lost |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        acc = run.get("final_accuracy")
        lines.append(f"| {run['strategy']} | {len(run['rounds'])} | {acc:.4f} | {_mb(run['upload_bytes']):.3f} | "
                     f"{_mb(run['download_bytes']):.3f} | {_mb(run['upload_bytes'] + run['download_bytes']):.3f} | "
                     f"{run.get('clients_lost_total', 0)} |")
    if reference:
        lines.append("")
        if "full_data_accuracy" in reference:
            lines.append(f"Centralised reference (all data in one place, {reference['full_data_epochs']} epochs): "
                         f"accuracy {reference['full_data_accuracy']:.4f}.")
        if "centralised_distill_accuracy" in reference:
            lines.append(f"Centralised {reference['centralised_distill_method']} at ipc {reference['centralised_distill_ipc']} "
                         f"(the pooled size): accuracy {reference['centralised_distill_accuracy']:.4f}.")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_bytes(runs: list[dict[str, Any]], path: Path, reference: dict[str, Any] | None = None) -> Path:
    """Accuracy after each round against cumulative upload bytes, all strategies, log x."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        pts = [(r["upload_bytes"], r["accuracy"]) for r in run["rounds"] if r["accuracy"] is not None and r["upload_bytes"] > 0]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=run["strategy"])
    if reference and "full_data_accuracy" in reference:
        ax.axhline(reference["full_data_accuracy"], color="grey", linestyle="--", label="centralised (all data)")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative upload bytes (all clients)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_label_histogram(hist: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Stacked bars: images of each class held by each client."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(hist)
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.25 * n, 20.0)), 3.6))
    bottom = [0] * n
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c, name in enumerate(classes):
        heights = [row[c] for row in hist]
        ax.bar(range(n), heights, bottom=bottom, color=cmap(c % cmap.N), label=str(name), width=0.85)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training images")
    ax.set_title(title)
    if len(classes) <= 20:
        ax.legend(ncol=min(10, len(classes)), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
