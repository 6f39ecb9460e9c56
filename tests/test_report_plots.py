"""The federated plots read at a glance: one-point runs are labelled apart, the upper bound's
label sits on a white ground, the histogram ticks every client and titles its colours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.text import Text

from fedcond.federated.report import plot_accuracy_vs_bytes, plot_label_histogram

MIB = 2**20


def _run(name: str, accs: list[float], mibs: list[float]) -> dict:
    rounds = [{"round": i + 1, "accuracy": a, "upload_bytes": int(m * MIB)} for i, (a, m) in enumerate(zip(accs, mibs))]
    return {"name": name, "strategy": name, "rounds": rounds, "upload_bytes": rounds[-1]["upload_bytes"]}


@pytest.fixture()
def figures(monkeypatch):
    """The figures the plot functions close (they save and close; the test keeps them)."""
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    monkeypatch.undo()
    plt.close("all")


def test_one_point_runs_are_labelled_apart_and_the_upper_bound_label_is_clear(tmp_path, figures):
    # The README's main job: four one-shot points within 0.003 of each other, one on the raw-data line.
    ups = [5.9, 11.9, 17.8, 23.8, 29.7]
    runs = [_run("fedcond", [0.9889], [0.184]), _run("fedavg", [0.81, 0.90, 0.95, 0.966, 0.973], ups)]
    refs = [_run("fedcond-float16", [0.9889], [0.107]), _run("fedcond-uint8", [0.9889], [0.068]),
            _run("random-real", [0.9911], [0.179])]
    plot_accuracy_vs_bytes(runs, tmp_path / "a.png", {"full_data_accuracy": 0.9956}, refs, 112_440, title="t")
    fig = figures[0]
    left, right = fig.axes
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in left.texts if t.get_text().split(":")[0] in
              ("fedcond", "fedcond-float16 (ref.)", "fedcond-uint8 (ref.)", "random-real (ref.)")]
    assert len(labels) == 4
    boxes = [Text.get_window_extent(t, renderer) for t in labels]  # the text alone, not its leader line
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(box.x1 < left.get_window_extent(renderer).x1 for box in boxes)  # inside the panel
    # Reference markers are white inside: the raw-data line does not run through float16's square.
    assert all(line.get_markerfacecolor() == "white" for line in left.lines if line.get_marker() in "sD^")
    upper = next(t for t in right.texts if t.get_text().startswith("upper bound"))
    assert upper.get_rotation() == 0 and upper.get_bbox_patch().get_facecolor()[:3] == (1.0, 1.0, 1.0)
    # The panels sit close: no wide blank gap between them (names are at the right panel's outer edge).
    gap = right.get_window_extent(renderer).x0 - left.get_window_extent(renderer).x1
    assert gap < 0.1 * fig.bbox.width


@pytest.mark.parametrize("clients", [10, 60])
def test_histogram_ticks_every_client_and_titles_its_legend(tmp_path, figures, clients):
    hist = [[(i + c) % 7 for c in range(10)] for i in range(clients)]
    plot_label_histogram(hist, [str(c) for c in range(10)], tmp_path / "h.png", "t")
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(clients)]
    assert ax.get_legend().get_title().get_text() == "class"
