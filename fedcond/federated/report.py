"""Reports of a federated comparison: results.json, accuracy-vs-bytes (and, with DP,
accuracy-vs-epsilon) plots, tables, histograms.

``results.json`` is the contract ``{"runs": [{"strategy": ..., "rounds": [{"round": 1,
"accuracy": 0.91, "upload_bytes": ..., "download_bytes": ...}, ...]}, ...]}`` — accuracy a
fraction, bytes cumulative up to that round — plus the run's settings, the centralised
reference, the reference runs (same schema as ``runs``), the raw-data upload bytes and
provenance fields beside it.

Units: results.json counts bytes; tables, console lines and plots show MiB (2^20 bytes),
one unit everywhere, named as such (192,389 bytes are 0.183 MiB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from fedcond.runinfo import write_json


def write_results(out: Path, runs: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    """``out/results.json`` with ``runs`` first (the contract) and ``meta`` fields after."""
    return write_json(out / "results.json", {"runs": runs, **meta})


MIB = 2**20  # bytes in a MiB: the unit of every table, console line and plot axis


def _mib(n: int | float) -> float:
    return n / MIB


def _row(run: dict[str, Any], raw_bytes: int | None) -> str:
    acc = run.get("final_accuracy")
    share = f"{run['upload_bytes'] / raw_bytes:.2%}" if raw_bytes else "-"
    return (
        f"| {run.get('name', run['strategy'])} | {len(run['rounds'])} | {acc:.4f} | {_mib(run['upload_bytes']):.3f} | "
        f"{_mib(run['download_bytes']):.3f} | {_mib(run['upload_bytes'] + run['download_bytes']):.3f} | {share} | "
        f"{run.get('clients_lost_total', 0)} |"
    )


def markdown_table(runs: list[dict[str, Any]], reference: dict[str, Any] | None = None,
                   reference_runs: list[dict[str, Any]] | None = None, raw_bytes: int | None = None) -> str:
    """One row per strategy (then per reference run): rounds, final accuracy, cumulative
    upload/download MiB, upload as a share of uploading the raw data, losses; then the
    raw-data bytes and the centralised references in words."""
    head = ["| {} | rounds | final accuracy | upload MiB | download MiB | total MiB | upload / raw data "
            "| clients lost |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines = [head[0].format("strategy"), head[1], *(_row(r, raw_bytes) for r in runs)]
    if reference_runs:
        lines += ["", "References (FedCond's controls, same partitions):", "",
                  head[0].format("reference"), head[1], *(_row(r, raw_bytes) for r in reference_runs)]
    lines.append("")
    if raw_bytes:
        lines.append(f"Raw data: every client uploading its whole partition once (uint8 pixels) is "
                     f"{_mib(raw_bytes):.3f} MiB ({raw_bytes:,} bytes; MiB = 2^20 bytes).")
    if reference:
        if "full_data_accuracy" in reference:
            lines.append(
                f"Centralised upper bound (all data in one place, trained to a plateau: "
                f"{reference['full_data_epochs']} epochs, best at {reference.get('full_data_best_epoch', '?')}): "
                f"accuracy {reference['full_data_accuracy']:.4f}."
            )
        if "centralised_distill_accuracy" in reference:
            lines.append(
                f"Centralised {reference['centralised_distill_method']} at ipc {reference['centralised_distill_ipc']} "
                f"(the pooled size): accuracy {reference['centralised_distill_accuracy']:.4f}."
            )
    return "\n".join(lines) + "\n"


def _finish_log_x_plot(fig: Any, ax: Any, path: Path, xlabel: str, reference: dict[str, Any] | None) -> Path:
    """Accuracy plots share their finish: the upper bound as a line, log x, labels, saved to ``path``."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if reference and "full_data_accuracy" in reference:
        ax.axhline(reference["full_data_accuracy"], color="grey", linestyle="--", label="centralised upper bound")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _points(run: dict[str, Any]) -> list[tuple[float, float]]:
    """(cumulative upload in MiB, accuracy) after each round that uploaded something."""
    return [(r["upload_bytes"] / MIB, r["accuracy"]) for r in run["rounds"]
            if r["accuracy"] is not None and r["upload_bytes"] > 0]


def plot_accuracy_vs_bytes(runs: list[dict[str, Any]], path: Path, reference: dict[str, Any] | None = None,
                           reference_runs: list[dict[str, Any]] | None = None, raw_bytes: int | None = None,
                           title: str = "") -> Path:
    """Two panels under ``title`` (data set, clients, partition, seed).

    Left: accuracy after each round against cumulative upload in MiB, log x: strategies as
    lines, reference runs as open markers, the raw-data upload as a vertical line and the
    centralised upper bound as a horizontal one. Right: every run's final accuracy, zoomed,
    one row each with its value and upload written beside its name — one-shot runs are
    single points that sit within a fraction of a point of each other and of the upper
    bound, which the left panel cannot separate.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax, final) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    rows: list[tuple[str, float, int, str]] = []  # (label, final accuracy, upload bytes, colour)
    for run in runs:
        pts = _points(run)
        if pts:
            xs, ys = zip(*pts)
            (line,) = ax.plot(xs, ys, marker="o", label=run.get("name", run["strategy"]))
            rows.append((run.get("name", run["strategy"]), ys[-1], run["upload_bytes"], line.get_color()))
    markers = iter("sD^v<>ph")
    for run in reference_runs or []:
        pts = _points(run)
        if pts:
            xs, ys = zip(*pts)
            name = run.get("name", run["strategy"])
            (line,) = ax.plot(xs, ys, marker=next(markers, "o"), markersize=7, linestyle=":",
                              markerfacecolor="none", label=f"{name} (reference)")
            rows.append((f"{name} (ref.)", ys[-1], run["upload_bytes"], line.get_color()))
    upper = reference.get("full_data_accuracy") if reference else None
    if raw_bytes:
        ax.axvline(raw_bytes / MIB, color="black", linestyle="-.", linewidth=1,
                   label=f"upload of the raw data ({raw_bytes / MIB:.3f} MiB)")
    if upper is not None:
        ax.axhline(upper, color="grey", linestyle="--", label=f"centralised upper bound ({upper:.4f})")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, not 10^-1
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_two_and_five))
    ax.set_xlabel("cumulative upload of all clients, MiB (2^20 bytes; log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("accuracy against bytes uploaded", fontsize=10)
    _final_accuracy_panel(final, rows, upper)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _two_and_five(value: float, _: Any = None) -> str:
    """Minor log-axis labels at 2 and 5 times a power of ten, plainly written (0.2, 50)."""
    import math  # noqa: PLC0415

    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if mantissa in (2, 5) else ""


def _final_accuracy_panel(ax: Any, rows: list[tuple[str, float, int, str]], upper: float | None) -> None:
    """Final accuracy per run as dots on a zoomed axis, best at the top, values in the labels."""
    if not rows:
        ax.set_axis_off()
        return
    rows = sorted(rows, key=lambda r: r[1])
    for y, (_, acc, _, colour) in enumerate(rows):
        ax.plot([acc], [y], marker="o", markersize=8, color=colour)
    values = [r[1] for r in rows] + ([upper] if upper is not None else [])
    pad = max(0.002, 0.1 * (max(values) - min(values)))
    ax.set_xlim(min(values) - pad, max(values) + pad)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_yticks(range(len(rows)), [f"{name}: {acc:.4f} at {nbytes / MIB:.3f} MiB"
                                     for name, acc, nbytes, _ in rows], fontsize=8)
    if upper is not None:
        ax.axvline(upper, color="grey", linestyle="--")
        ax.text(upper, len(rows) - 0.45, " upper bound", color="grey", fontsize=8, va="top", ha="right",
                rotation=90)
    ax.set_xlabel("final test accuracy (zoomed)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("final accuracy: value at upload", fontsize=10)


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


def annotate_privacy(run: dict[str, Any]) -> dict[str, Any]:
    """Add ``client_epsilons`` (each pooled client's stated ε, None without DP), ``epsilon``
    and ``delta`` to a FedCond run record, from its pool provenance.

    A run's ε is the largest client's: every training image lives at one client and reaches
    the server only through that client's set (parallel composition), so each image is
    protected at least at its client's ε. None when no client used DP.
    """
    pool = run.get("pool_provenance")
    if pool is None:
        return run
    run["client_epsilons"] = [p.get("epsilon") for p in pool]
    stated = [p for p in pool if p.get("epsilon") is not None]
    private = bool(stated) and len(stated) == len(pool)
    run["epsilon"] = max(p["epsilon"] for p in stated) if private else None
    run["delta"] = max(p["delta"] for p in stated) if private else None
    return run


def privacy_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: accuracy against the privacy budget, one row per FedCond run ("" when none
    used DP). Runs without DP show epsilon = inf."""
    if not any(r.get("epsilon") is not None for r in runs):
        return ""
    rows = [r for r in runs if "client_epsilons" in r]
    rows.sort(key=lambda r: (r["epsilon"] is None, r["epsilon"] or 0.0))
    lines = ["Accuracy against the privacy budget (epsilon: the largest client's; inf: no DP):", "",
             "| run | epsilon | delta | final accuracy | upload MiB |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        eps = f"{r['epsilon']:.3g}" if r["epsilon"] is not None else "inf"
        delta = f"{r['delta']:.0e}" if r.get("delta") is not None else "-"
        lines.append(f"| {r.get('name', r['strategy'])} | {eps} | {delta} | {r['final_accuracy']:.4f} | "
                     f"{_mib(r['upload_bytes']):.3f} |")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_epsilon(
    runs: list[dict[str, Any]], path: Path, reference: dict[str, Any] | None = None
) -> Path | None:
    """Final accuracy against the runs' ε (log x), beside the same plot against bytes: DP
    runs as points joined in ε order, FedCond runs without DP as dashed horizontal lines
    (ε = inf), the centralised upper bound as a grey one. None (no file) without DP runs."""
    private = sorted((r for r in runs if r.get("epsilon") is not None and r.get("final_accuracy") is not None),
                     key=lambda r: r["epsilon"])
    if not private:
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    by_dtype: dict[str, list[dict[str, Any]]] = {}
    for r in private:
        by_dtype.setdefault(str(r.get("storage_dtype")), []).append(r)
    for dtype, group in by_dtype.items():
        ax.plot([r["epsilon"] for r in group], [r["final_accuracy"] for r in group], marker="o",
                label=f"FedCond with DP-DM ({dtype})")
    styles = iter([":", "--", "-."])
    for r in runs:
        if "client_epsilons" in r and r.get("epsilon") is None and r.get("final_accuracy") is not None:
            ax.axhline(r["final_accuracy"], linestyle=next(styles, ":"), linewidth=1.2,
                       label=f"{r.get('name', r['strategy'])} (no DP)", color=f"C{len(by_dtype) + len(ax.lines) % 6}")
    xlabel = "privacy budget epsilon (largest client's; lower = more private)"
    return _finish_log_x_plot(fig, ax, path, xlabel, reference)
