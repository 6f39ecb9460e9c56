"""A killed ``fedcond continual`` comparison, started again, continues and ends the same."""

from __future__ import annotations

import json
import warnings

import pytest

warnings.filterwarnings("ignore", category=DeprecationWarning)

import torch

from fedcond.continual.benchmarks import make_benchmark
from fedcond.continual.runner import ContinualConfig, forgetting, run_comparison


class Killed(Exception):
    """Stands for the process being killed mid-run."""


@pytest.fixture(scope="module")
def bench(digits):
    return make_benchmark("split-digits", data=digits, train_fraction=0.15)


def _config() -> ContinualConfig:
    return ContinualConfig(strategies=("naive", "replay", "distilled-replay"), mem_sizes=(10,), seeds=(1,),
                           epochs=1, lr=0.01, method="dm", iterations=3, distill_options={"dsa": False},
                           buffer_epochs=15, precision="float32")  # the same on every CPU, AMX or not


def _comparable(runs):
    return [
        {
            k: v
            for k, v in r.items()
            if k not in ("wall_time_s", "peak_rss_mib", "buffer_file", "buffer_image", "distill_seconds_per_experience")
        }
        for r in runs
    ]


def test_killed_run_resumes_after_last_experience_with_identical_results(bench, tmp_path):
    device = torch.device("cpu")
    reference = run_comparison(bench, _config(), tmp_path / "whole", device)

    trained: list[tuple[str, int]] = []

    def kill_mid_distilled(tag: str, i: int) -> None:
        trained.append((tag, i))
        if tag.startswith("distilled-replay") and i == 2:
            raise Killed

    with pytest.raises(Killed):
        run_comparison(bench, _config(), tmp_path / "cut", device, on_experience=kill_mid_distilled)
    assert (tmp_path / "cut" / "runs" / "naive_m0_s1.json").exists()
    assert (tmp_path / "cut" / "checkpoints" / "distilled-replay_m10_s1.pt").exists()

    trained.clear()
    resumed = run_comparison(
        bench, _config(), tmp_path / "cut", device, on_experience=lambda t, i: trained.append((t, i))
    )
    # nothing finished is recomputed: the finished runs are read back, the killed one goes on at experience 3
    assert trained == [("distilled-replay_m10_s1", 3), ("distilled-replay_m10_s1", 4)]
    assert _comparable(resumed) == _comparable(reference)
    assert not (tmp_path / "cut" / "checkpoints" / "distilled-replay_m10_s1.pt").exists()


def test_changed_settings_are_not_taken_from_an_old_run(bench, tmp_path):
    device = torch.device("cpu")
    cfg = ContinualConfig(strategies=("naive",), mem_sizes=(10,), seeds=(0,), epochs=1, lr=0.01)
    first = run_comparison(bench, cfg, tmp_path, device)[0]
    seen: list = []
    cfg2 = ContinualConfig(strategies=("naive",), mem_sizes=(10,), seeds=(0,), epochs=1, lr=0.02)
    second = run_comparison(bench, cfg2, tmp_path, device, on_experience=lambda t, i: seen.append(i))[0]
    assert seen == [0, 1, 2, 3, 4] and second["settings"]["lr"] == 0.02 != first["settings"]["lr"]
    assert json.loads((tmp_path / "runs" / "naive_m0_s0.json").read_text())["settings"]["lr"] == 0.02


def test_forgetting_is_avalanches_stream_forgetting():
    # mean over experiences but the last of (right after training it) - (at the end)
    rows = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.3, 0.6, 0.7]]
    assert forgetting(rows) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    assert forgetting([[0.4, 0.5]]) == 0.0


def test_a_run_known_from_a_results_file_is_taken_only_with_its_settings(bench, tmp_path):
    """A fresh scratch given the entries of an earlier results file runs only what they lack: the entry with
    the same settings is taken (and saved to the scratch), one with other settings is not."""
    device = torch.device("cpu")
    cfg = ContinualConfig(strategies=("naive",), mem_sizes=(10,), seeds=(0, 1), epochs=1, lr=0.01)
    earlier = run_comparison(bench, ContinualConfig(strategies=("naive",), mem_sizes=(10,), seeds=(0,), epochs=1,
                                                    lr=0.01), tmp_path / "earlier", device)
    other = {**earlier[0], "settings": {**earlier[0]["settings"], "seed": 1, "lr": 0.02}}
    seen: list = []
    runs = run_comparison(bench, cfg, tmp_path / "fresh", device, on_experience=lambda t, i: seen.append(t),
                          known_runs=[earlier[0], other])
    assert runs[0] == earlier[0] and runs[1]["settings"]["seed"] == 1 and runs[1]["settings"]["lr"] == 0.01
    assert set(seen) == {"naive_m0_s1"}  # only seed 1 trained
    assert json.loads((tmp_path / "fresh" / "runs" / "naive_m0_s0.json").read_text()) == earlier[0]


def test_a_resumed_run_appends_to_its_logs_and_never_overwrites_them(tmp_path):
    """Avalanche's CSVLogger opens its files for writing: a resumed run gets its own folder, and the
    text log keeps every earlier line under a marker."""
    from fedcond.continual.runner import open_run_log

    logs = tmp_path / "logs"
    logs.mkdir()
    with open_run_log(logs, "replay_m20_s0") as (text, csv_folder):
        assert csv_folder == logs / "replay_m20_s0" and text.tell() == 0
        text.write("experience 0 trained\n")
        csv_folder.mkdir()
        (csv_folder / "eval_results.csv").write_text("first run\n")
    for n in (1, 2):
        with open_run_log(logs, "replay_m20_s0") as (text, csv_folder):
            assert csv_folder == logs / "replay_m20_s0" / f"resumed-{n}"
            csv_folder.mkdir()
    log = (logs / "replay_m20_s0.txt").read_text()
    assert log.startswith("experience 0 trained\n") and log.count("=== resumed ") == 2
    assert (logs / "replay_m20_s0" / "eval_results.csv").read_text() == "first run\n"
