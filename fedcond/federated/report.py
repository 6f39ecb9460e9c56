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
    chosen, acc, val = run.get("selected_round"), run.get("selected_accuracy"), run.get("selected_val_accuracy")
    if chosen is None:  # a record from before validation-selected rounds: its last round, said so
        chosen, acc, val = f"{len(run['rounds'])} (last)", run.get("final_accuracy"), None
    up = run.get("selected_upload_bytes", run["upload_bytes"])
    down = run.get("selected_download_bytes", run["download_bytes"])
    share = f"{up / raw_bytes:.2%}" if raw_bytes else "-"
    val_text = f"{val:.4f}" if val is not None else "-"
    return (
        f"| {run.get('name', run['strategy'])} | {len(run['rounds'])} | {chosen} | {val_text} | {acc:.4f} | "
        f"{_mib(up):.3f} | {_mib(down):.3f} | {_mib(up + down):.3f} | {share} | {run.get('clients_lost_total', 0)} |"
    )


def recipe_lines(cfg: Any, channels: int) -> list[str]:
    """The report's first lines: any unequal-recipe warning, then the recipe and what each
    learner tunes, and the validation protocol (``cfg``: the comparison's FederateConfig)."""
    lines = [f"**{note}**" for note in cfg.recipe_notes]
    server = cfg.server_recipe.describe(channels)
    lines += [
        f"Training recipe of every learner: {cfg.recipe.describe(channels)}"
        + ("." if cfg.server_recipe == cfg.recipe else f"; the server's training on sets: {server}."),
        f"- FedAvg/FedProx clients: lr {cfg.lr:g}, {cfg.local_epochs} local epochs a round, batch {cfg.batch_size}"
        + (f", FedProx mu {cfg.proximal_mu:g}" if "fedprox" in cfg.strategy_names else "") + ".",
        f"- Server training on sets (FedCond and its controls): lr {cfg.server_lr_train:g}, {cfg.server_epochs} "
        "epochs, batch 256.",
        "- Upper bound: lr 0.01, batch 64, to its validation plateau.",
        f"Validation: {cfg.val_fraction:.0%} of each class of the training images, held out before partitioning "
        "(no client holds them). Each run is reported at its round of best validation accuracy, with the test "
        "accuracy of that round; bytes are counted up to that round. The test split chooses nothing.",
        "",
    ]
    return lines


def markdown_table(runs: list[dict[str, Any]], reference: dict[str, Any] | None = None,
                   reference_runs: list[dict[str, Any]] | None = None, raw_bytes: int | None = None,
                   preamble: Sequence[str] = ()) -> str:
    """``preamble`` (:func:`recipe_lines`), then one row per strategy (then per reference run):
    rounds run, the round chosen on validation, its validation and test accuracy, cumulative
    upload/download MiB to it, upload as a share of uploading the raw data, losses; then the
    raw-data bytes and the centralised references in words."""
    head = ["| {} | rounds | reported round (best validation) | validation accuracy | test accuracy | upload MiB "
            "| download MiB | total MiB | upload / raw data | clients lost |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines = [*preamble, head[0].format("strategy"), head[1], *(_row(r, raw_bytes) for r in runs)]
    if reference_runs:
        lines += ["", "References (FedCond's controls, same partitions, same server recipe):", "",
                  head[0].format("reference"), head[1], *(_row(r, raw_bytes) for r in reference_runs)]
        lines += _byte_match_lines(runs, reference_runs)
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


def distill_cost_lines(runs: list[dict[str, Any]]) -> str:
    """Markdown: each distilling run's distillation CPU-seconds per client, round by round (the
    mean over the clients whose reply states it), beside its bytes; "" when no run states any."""
    lines = []
    for run in runs:
        per_round = []
        for rnd in run["rounds"]:
            values = [c["distill_cpu_seconds"] for c in rnd.get("clients", [])
                      if c.get("distill_cpu_seconds") is not None]
            per_round.append(f"{sum(values) / len(values):.2f}" if values else "-")
        if any(v != "-" for v in per_round):
            lines.append(f"- {run.get('name', run['strategy'])}: {', '.join(per_round)}")
    if not lines:
        return ""
    return ("Distillation CPU-seconds per client per round (mean over the clients that replied; rounds 1, 2, ...):"
            "\n\n" + "\n".join(lines) + "\n")


def _byte_match_lines(runs: list[dict[str, Any]], reference_runs: list[dict[str, Any]]) -> list[str]:
    """Whether each real-image control uploaded FedCond's bytes within 1 % (labels and metadata counted)."""
    ours = [r for r in runs if r.get("pool_provenance") is not None]  # FedCond's controls, not FedDM's or FedAF's
    fedcond = next((r for r in ours if str(r.get("strategy", "")).startswith("fedcond")), None)
    controls = [r for r in reference_runs if str(r.get("name", "")).startswith(("random-real", "herding"))]
    if fedcond is None or not controls or not fedcond["upload_bytes"]:
        return []
    parts = []
    for r in controls:
        ratio = r["upload_bytes"] / fedcond["upload_bytes"] - 1
        parts.append(f"{r['name']} {ratio:+.2%}" + ("" if abs(ratio) <= 0.01 else " (NOT within 1 %)"))
    return ["", f"Controls' upload against {fedcond.get('name', 'fedcond')}'s (every byte of the message: images, "
                f"labels, metadata): {', '.join(parts)}."]


def _finish_log_x_plot(fig: Any, ax: Any, path: Path, xlabel: str, reference: dict[str, Any] | None) -> Path:
    """Accuracy plots share their finish: the upper bound as a line, log x, labels, saved to ``path``."""
    import matplotlib.pyplot as plt

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


def reported_accuracy(run: dict[str, Any]) -> float:
    """A run's test accuracy at its validation-selected round (records from before validation:
    the last round's), never a maximum of test accuracies."""
    return reported_point(run)[0]


def reported_point(run: dict[str, Any]) -> tuple[float, int]:
    """A run's test accuracy at its validation-chosen round and the upload to it (an old record: its last)."""
    if run.get("selected_accuracy") is None:
        last = [r for r in run["rounds"] if r.get("accuracy") is not None][-1]
        return run.get("final_accuracy", last["accuracy"]), run["upload_bytes"]
    return run["selected_accuracy"], run.get("selected_upload_bytes", run["upload_bytes"])


def plot_accuracy_vs_bytes(runs: list[dict[str, Any]], path: Path, reference: dict[str, Any] | None = None,
                           reference_runs: list[dict[str, Any]] | None = None, raw_bytes: int | None = None,
                           title: str = "") -> Path:
    """Two panels under ``title`` (data set, clients, partition, seed), drawn to be read at
    the width a README shows them (about 900 pixels).

    Left: accuracy after each round against cumulative upload in MiB, log x: strategies as
    lines, reference runs as open markers (white inside, so a line behind one does not run
    through it), the raw-data upload as a vertical line and the centralised upper bound as
    a horizontal one. A run of one point (one-shot FedCond, its references) is named by a
    label with a leader line, fanned out into free space: such points sit within a fraction
    of a point of each other and would hide one another's markers. Right: every run's
    reported accuracy (the test accuracy of its best validation round), zoomed, one row each
    with its value and the upload to that round written beside its dot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, final) = plt.subplots(1, 2, figsize=(11, 4.9), gridspec_kw={"width_ratios": [3, 2]})
    rows: list[tuple[str, float, int, str]] = []  # (label, reported accuracy, upload bytes to it, colour)
    singles: list[tuple[str, float, float, str]] = []  # one-point runs: (label, MiB, accuracy, colour)
    for run in runs:
        pts = _points(run)
        if pts:
            xs, ys = zip(*pts)
            name = run.get("name", run["strategy"])
            (line,) = ax.plot(xs, ys, marker="o", markersize=6, zorder=4, label=name if len(pts) > 1 else "_")
            rows.append((name, *reported_point(run), line.get_color()))
            if len(pts) == 1:
                singles.append((name, xs[0], ys[0], line.get_color()))
    markers = iter("sD^v<>ph")
    for run in reference_runs or []:
        pts = _points(run)
        if pts:
            xs, ys = zip(*pts)
            name = run.get("name", run["strategy"])
            (line,) = ax.plot(xs, ys, marker=next(markers, "o"), markersize=10, linestyle=":", markeredgewidth=1.5,
                              markerfacecolor="white", zorder=3,
                              label=f"{name} (reference)" if len(pts) > 1 else "_")
            rows.append((f"{name} (ref.)", *reported_point(run), line.get_color()))
            if len(pts) == 1:
                singles.append((f"{name} (ref.)", xs[0], ys[0], line.get_color()))
    upper = reference.get("full_data_accuracy") if reference else None
    if raw_bytes:
        ax.axvline(raw_bytes / MIB, color="black", linestyle="-.", linewidth=1, zorder=2,
                   label=f"upload of the raw data ({raw_bytes / MIB:.3f} MiB)")
    if upper is not None:
        ax.axhline(upper, color="grey", linestyle="--", zorder=2, label=f"centralised upper bound ({upper:.4f})")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 0.1, not 10^-1
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(_two_and_five))
    ax.tick_params(labelsize=9)
    ax.set_xlabel("cumulative upload of all clients, MiB (2^20 bytes; log scale)", fontsize=9)
    ax.set_ylabel("test accuracy", fontsize=9)
    ax.grid(True, which="both", alpha=0.25, zorder=0)
    _label_single_points(ax, singles)
    ax.legend(fontsize=8, loc="best", framealpha=0.95)
    ax.set_title("accuracy against bytes uploaded", fontsize=10)
    _final_accuracy_panel(final, rows, upper)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(w_pad=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label_single_points(ax: Any, singles: list[tuple[str, float, float, str]]) -> None:
    """Name each one-point run by a label in its colour, stacked beneath and to the right of
    the points with a leader line to its marker: the labels never overlap each other, and
    ordered by upload (largest first, the top label) the leader lines do not cross."""
    if not singles:
        return
    import math

    lo, hi = ax.get_xlim()
    span = math.log10(hi) - math.log10(lo)
    right = max((math.log10(x) - math.log10(lo)) / span for _, x, _, _ in singles)
    column = min(right + 0.1, 0.55)  # axes fraction: right of the rightmost point, clear of the right edge
    for i, (name, x, y, colour) in enumerate(sorted(singles, key=lambda s: -s[1])):
        ax.annotate(f"{name}: {y:.4f}", xy=(x, y), xytext=(column, 0.80 - 0.075 * i), textcoords="axes fraction",
                    fontsize=8.5, color=colour, va="center", zorder=5,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9},
                    arrowprops={"arrowstyle": "-", "color": colour, "linewidth": 0.8, "shrinkA": 0, "shrinkB": 6,
                                "relpos": (0.0, 0.5)})  # from the label's left end: it passes left of the others


def _two_and_five(value: float, _: Any = None) -> str:
    """Minor log-axis labels at 2 and 5 times a power of ten, plainly written (0.2, 50)."""
    import math

    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if mantissa in (2, 5) else ""


def _final_accuracy_panel(ax: Any, rows: list[tuple[str, float, int, str]], upper: float | None) -> None:
    """Reported accuracy per run as dots on a zoomed axis, best at the top: the run's name as
    its row label, its value and upload beside the dot (on the side with room), and the
    upper bound as a line labelled on a white ground at the bottom, clear of the gridlines."""
    if not rows:
        ax.set_axis_off()
        return
    rows = sorted(rows, key=lambda r: r[1])
    values = [r[1] for r in rows] + ([upper] if upper is not None else [])
    pad = max(0.002, 0.12 * (max(values) - min(values)))
    left, right = min(values) - pad, max(values) + pad
    ax.set_xlim(left, right)
    ax.set_ylim(-0.9 if upper is not None else -0.6, len(rows) - 0.4)
    middle = (left + right) / 2
    for y, (_, acc, nbytes, colour) in enumerate(rows):
        ax.plot([acc], [y], marker="o", markersize=8, color=colour, zorder=4)
        text = f"{acc:.4f} at {nbytes / MIB:.3f} MiB"
        offset = -9 if acc > middle else 9  # toward the middle: the text never leaves the panel
        ax.annotate(text, xy=(acc, y), xytext=(offset, 0), textcoords="offset points", fontsize=8.5, va="center",
                    ha="right" if offset < 0 else "left", zorder=5)
    ax.set_yticks(range(len(rows)), [name for name, _, _, _ in rows], fontsize=8.5)
    ax.yaxis.tick_right()  # names at the outer edge: no blank gap between the panels
    ax.tick_params(axis="x", labelsize=9)
    if upper is not None:
        ax.axvline(upper, color="grey", linestyle="--", zorder=2)
        ax.text(upper, -0.75, f"upper bound {upper:.4f} ", color="grey", fontsize=8.5, va="center", ha="right",
                zorder=5, bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"})
    ax.set_xlabel("test accuracy at the best validation round (zoomed)", fontsize=9)
    ax.grid(True, axis="x", alpha=0.25, zorder=0)
    ax.set_title("reported accuracy: value at upload", fontsize=10)


def plot_label_histogram(hist: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "") -> Path:
    """Stacked bars: images of each class held by each client, every client id ticked, the
    colours' legend titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(hist)
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.25 * n, 20.0)), 3.8))
    bottom = [0] * n
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c, name in enumerate(classes):
        heights = [row[c] for row in hist]
        ax.bar(range(n), heights, bottom=bottom, color=cmap(c % cmap.N), label=str(name), width=0.85)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=8 if n <= 40 else 6, rotation=0 if n <= 40 else 90)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("client (partition id)")
    ax.set_ylabel("training images")
    ax.set_title(title)
    if len(classes) <= 20:
        ax.legend(ncol=min(10, len(classes)), fontsize=7, title="class", title_fontsize=8, loc="upper center",
                  bbox_to_anchor=(0.5, -0.2))
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
    """Markdown: accuracy against the privacy budget, one row per FedCond and DP-FedAvg run
    ("" when none used DP). Runs without DP show epsilon = inf."""
    if not any(r.get("epsilon") is not None for r in runs):
        return ""
    rows = [r for r in runs if "client_epsilons" in r or r.get("strategy") == "dpfedavg"]
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
