"""A DP experiment's output folder: everything in it is DP, or apart and named as not.

``fedcond federate --dp-epsilon E`` writes into ``OUT`` only what follows from the clients'
DP releases: the DP FedCond runs (accuracy, bytes of DP sets, each client's stated ε) and
DP-FedAvg's (DP-SGD clients, :mod:`fedcond.federated.dp_sgd`), their plots and tables, the
settings, and the combined ε of every DP release made on the same data
(:func:`combined_privacy`). What is not DP goes, only when asked (``dp_non_private``,
``--dp-non-private``), into ``OUT/non_private/`` with a note saying so:

- runs that use the private data without DP: FedAvg/FedProx/FedAdam, the references whose
  clients upload real images (random real, herding), the all-data upper bound;
- exact facts about the private data: the per-client, per-class label histogram, the bytes
  of every client uploading its raw partition (its exact size), and timings and memory,
  which grow with the data: the experiment's wall time, CPU seconds and memory peaks, and
  each round's seconds and clients' seconds (stripped from the DP runs, :func:`strip_timings`).

Pure functions over run records and settings; :mod:`fedcond.simulations.experiment` calls them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from fedcond.errors import FedcondError
from fedcond.federated.config import FederateConfig
from fedcond.runinfo import write_json

NON_PRIVATE = "non_private"
NOTE_NAME = "NOT_DIFFERENTIALLY_PRIVATE.txt"
NOTE = ("This folder is NOT differentially private. It holds what a --dp-epsilon experiment ran or measured outside "
        "its guarantee, because --dp-non-private asked for it: runs that use the private data without DP "
        "(FedAvg/FedProx/FedAdam, references whose clients upload real images, the all-data upper bound) and exact "
        "facts about the private data (per-client label histograms, raw-data bytes per client, timings and memory). "
        "Do not release it with the DP results in the folder above.")
ROUND_TIMINGS = ("seconds", "clients_seconds")
RUN_TIMINGS = ("wall_seconds", "cpu_seconds", "peak_memory")


def dp_plan(cfg: FederateConfig, strategies: list[str], reference: str) -> tuple[FederateConfig, list[str], str,
                                                                                  list[str]]:
    """What a DP experiment runs: without ``dp_non_private``, only the DP FedCond strategies,
    no real-image references and no upper bound. Returns (config, strategies, reference,
    what was left out, in words)."""
    if cfg.dp_non_private:
        return cfg, strategies, reference, []
    private = [s for s in strategies if is_private_strategy(s)]
    others = [s for s in strategies if s not in private]
    if not private:
        raise FedcondError(f"--dp-epsilon: {', '.join(others)} use the private data without DP; run fedcond or "
                           f"dpfedavg, or add --dp-non-private to run them apart in OUT/{NON_PRIVATE}/")
    left = [f"{s} (trains on the private data without DP)" for s in others]
    if cfg.random_reference or cfg.herding_reference:
        left.append("the random-real and herding references (their clients upload real images)")
    if reference != "none":
        left.append(f"the {reference} reference (trained on all the private data)")
    left.append("exact label histograms, raw-data bytes per client, timings and memory")
    return replace(cfg, random_reference=False, herding_reference=False), private, "none", left


def is_private_strategy(name: str) -> bool:
    """Whether strategy ``name`` is DP under ``--dp-epsilon``: FedCond's (DP-DM sets) or dpfedavg (DP-SGD)."""
    return name.startswith("fedcond") or name == "dpfedavg"


def is_private_plan(cfg: FederateConfig, kind: str | None) -> bool:
    """Whether a planned run (its config and reference ``kind``) makes only DP releases: a DP
    strategy at an ε, and not a reference whose clients upload real images."""
    real_images = kind is not None and kind.startswith(("random-real", "herding"))
    return cfg.dp_epsilon > 0 and is_private_strategy(cfg.strategy) and not real_images


def checkpoint_root(checkpoints: Path, private_experiment: bool, private_run: bool) -> Path:
    """Where a run's checkpoints go: ``checkpoints`` (``OUT/checkpoints``), except a non-DP run of
    a DP experiment (``--dp-non-private``), whose go with the rest of the non-private part
    (``OUT/non_private/checkpoints``)."""
    if private_experiment and not private_run:
        return checkpoints.parent / NON_PRIVATE / checkpoints.name
    return checkpoints


def is_private_run(run: dict[str, Any]) -> bool:
    """Whether a run record is DP output: every pooled client stated an ε."""
    return run.get("epsilon") is not None


def strip_timings(run: dict[str, Any]) -> dict[str, Any]:
    """A DP run's record without its timings (they grow with the private data): each round's
    ``seconds`` and ``clients_seconds`` and the run's wall and CPU seconds and memory peaks
    become None (as in a resumed round)."""
    for r in run.get("rounds", []):
        for key in ROUND_TIMINGS:
            if key in r:
                r[key] = None
        for client in r.get("clients", []):  # a DP client reports no time; none is kept if one did
            if client.get("distill_cpu_seconds") is not None:
                client["distill_cpu_seconds"] = None
    for key in RUN_TIMINGS:
        if key in run:
            run[key] = None
    run["timings"] = "withheld: a DP run's timings grow with the size of the private data"
    return run


def combined_privacy(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ε of the whole folder under basic composition: every DP run on the same data made
    its own release, so their ε add (and their δ). Runs stating the same (ε, δ) count once:
    they are storage-dtype reruns that re-encode the same kept sets
    (:mod:`fedcond.federated.set_reuse`). None when no run is DP."""
    # DP-FedAvg's run is its own release even at FedCond's very (epsilon, delta)
    releases = sorted({(r["epsilon"], r["delta"], r.get("strategy") == "dpfedavg") for r in runs if is_private_run(r)})
    if not releases:
        return None
    return {"epsilon": sum(e for e, _, _ in releases), "delta": sum(d for _, d, _ in releases),
            "releases": [{"epsilon": e, "delta": d} for e, d, _ in releases],
            "composition": "basic composition: the sum of the epsilons (and deltas) of every distinct DP release made "
                           "on the same clients' data in this folder; each run's own epsilon holds for that run alone"}


def composition_line(combined: dict[str, Any] | None) -> str:
    """The folder's combined ε in words ("" without DP, or with one release)."""
    if combined is None or len(combined["releases"]) < 2:
        return ""
    parts = " + ".join(f"{r['epsilon']:.3g}" for r in combined["releases"])
    return (f"\nCombined privacy of this folder: epsilon {combined['epsilon']:.3g} = {parts}, delta "
            f"{combined['delta']:.1e} ({combined['composition']}).\n")


def write_non_private(out: Path, payload: dict[str, Any]) -> Path:
    """``OUT/non_private/results.json`` with ``payload`` and the note that says what it is."""
    folder = out / NON_PRIVATE
    write_json(folder / "results.json", {"differentially_private": False, "note": NOTE, **payload})
    (folder / NOTE_NAME).write_text(NOTE + "\n")
    return folder
