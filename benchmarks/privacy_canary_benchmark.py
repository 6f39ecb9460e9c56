"""Canary audit benchmark: an empirical lower bound on ε for each kind of set.

One cell per (kind of set, audit seed): random real images, DM from real images (DM's
default), DM from noise, DP-DM (δ 1e-5, ``release``) at ε = 1, 10 and 100 and with its
noise switched off (a broken mechanism: the stated ε is 1, the release carries no noise),
the DP-DM kinds also with crafted canaries (``-crafted``: random-pixel images). Each cell
is one canary audit (:func:`fedcond.audit.canary.canary_audit`): ``--canaries`` canaries,
each kept with probability 1/2, are the whole training set the method sees; every attack
that applies is scored on the same run (black-box on the set file; white-box decoding and
inner product on DP-DM's released noisy sums, :mod:`fedcond.audit.whitebox`), each
giving ``epsilon_lower_bound`` at 95 % confidence by itself (Steinke, Nasr & Jagielski
2023) and its own ceiling (what it proves if every canary it can single out is right).
The headline ``empirical_epsilon_lower_bound`` is white-box decoding where the method
exposes its release, else black-box. Data are normalised with public constants in every
cell (DP-DM refuses any other).

Usage (what produced benchmarks/results/privacy_canary_digits.* and privacy_canary_mnist.*):

    OMP_NUM_THREADS=1 python benchmarks/privacy_canary_benchmark.py --dataset digits --threads 1 --seeds 0
    OMP_NUM_THREADS=1 python benchmarks/privacy_canary_benchmark.py --dataset mnist --data-dir /work/shared/data \
        --threads 1 --seeds 0 --dp-iterations 300 --dp-option members_per_step=2

Resumable: results/privacy_canary_<dataset>.json is rewritten after every cell, and a re-run
with the same settings skips the cells it holds (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator
from unittest import mock

import torch

from fedcond.audit.canary import CanaryConfig, canary_audit
from fedcond.commands.common import parse_options
from fedcond.data import load_dataset
from fedcond.distill import make_distiller
from fedcond.privacy.noise import SecretNoise
from fedcond.runinfo import package_versions, run_record, write_json

# kind -> (method, options); DP kinds get --dp-option, DM kinds --dm-option. "no-noise" kinds run
# with the mechanism's noise switched off (a broken mechanism the audit must catch); "-crafted"
# kinds audit with crafted canaries.
NO_NOISE, CRAFTED = "no-noise", "-crafted"
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "random-real": ("random", {}),
    "dm-real-init": ("dm", {"init": "real"}),
    "dm-noise-init": ("dm", {"init": "noise"}),
    **{f"dp-dm-{name}{suffix}": ("dp-dm", {"epsilon": eps})
       for suffix in ("", CRAFTED) for name, eps in ((NO_NOISE, 1.0), ("eps100", 100.0), ("eps10", 10.0),
                                                      ("eps1", 1.0))},
}
ATTACKS = ("whitebox", "whitebox-inner", "blackbox")


@contextlib.contextmanager
def silenced_noise() -> Iterator[None]:
    """The DP mechanism's Gaussian noise switched off (zeros): a broken mechanism, for the audit's test."""
    with mock.patch.object(SecretNoise, "gaussian", lambda self, shape, std: torch.zeros(shape, dtype=torch.float64)):
        yield


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--canaries", type=int, default=1000)
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--dm-iterations", type=int, default=100)
    p.add_argument("--dp-iterations", type=int, default=500, help="release: matching iterations (no privacy cost)")
    p.add_argument("--dm-option", action="append", default=[], help="DM option key=value (repeatable)")
    p.add_argument("--dp-option", action="append", default=[], help="DP-DM option key=value (repeatable)")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma list of kinds of set")
    p.add_argument("--seeds", default="0", help="comma list of audit seeds (canaries, inclusion and method)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--fresh", action="store_true", help="ignore finished cells in the results file")
    p.add_argument("--report-only", action="store_true", help="run no cell; rewrite the markdown from the JSON")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown kind(s) {', '.join(unknown)}; known: {', '.join(KINDS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    data = load_dataset(args.dataset, data_dir=args.data_dir, normalize="public")
    path = Path(args.out) / f"privacy_canary_{data.name}.json"
    settings = {k: getattr(args, k) for k in ("canaries", "confidence", "ipc", "delta", "dm_iterations",
                                               "dp_iterations", "dm_option", "dp_option")}
    settings["normalization"] = {"mean": list(data.mean), "std": list(data.std)}
    settings["attacks"] = list(ATTACKS)  # every attack that applies is scored (older files scored pixels only)
    record = run_record(torch.device("cpu"), command=" ".join(["python", *sys.argv]), dataset=data.name)
    record["versions"] = package_versions()
    record["commands"] = [record["command"]]
    done: dict[str, Any] = {}
    if path.exists() and not args.fresh:
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            done = saved.get("cells", {})
            record["started_at"] = saved.get("started_at", record["started_at"])  # the first command's start
            if args.report_only:
                record["command"] = saved.get("command", record["command"])
            earlier = saved.get("commands", [])
            record["commands"] = earlier + ([] if args.report_only or record["command"] in earlier
                                            else [record["command"]])
        else:
            print(f"{path} holds other settings: starting over (its cells are replaced)", flush=True)

    for kind in [] if args.report_only else kinds:
        for seed in seeds:
            cell = f"{kind}/seed{seed}"
            if cell in done:
                print(f"{cell}: done before ({_summary(done[cell])})", flush=True)
                continue
            done[cell] = run_cell(kind, seed, data, args)
            print(f"{cell}: {_summary(done[cell])}", flush=True)
            write_json(path, {**record, "settings": settings, "cells": done})  # after every cell: resumable
    write_json(path, {**record, "settings": settings, "cells": done})
    md = markdown(record, data.name, settings, done)
    path.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {path} and {path.with_suffix('.md')}")


def run_cell(kind: str, seed: int, data, args: argparse.Namespace) -> dict[str, Any]:
    """One canary audit: every number of the cell."""
    method, options = KINDS[kind]
    values = dict(options)
    iterations = None
    if method == "dm":
        iterations = args.dm_iterations
        values.update(parse_options(args.dm_option))
    elif method == "dp-dm":
        iterations = args.dp_iterations
        values.update(delta=args.delta, **parse_options(args.dp_option))
    distiller, config = make_distiller(method, values, fixed={"ipc": args.ipc, "iterations": iterations})
    audit_config = CanaryConfig(canaries=args.canaries, confidence=args.confidence, delta=args.delta, seed=seed,
                                crafted=kind.endswith(CRAFTED))
    with silenced_noise() if NO_NOISE in kind else contextlib.nullcontext():
        audit, sset = canary_audit(data, distiller, config, audit_config, method_seed=seed)
    result = audit.to_json()
    result["num_images"] = sset.num_images
    result["noise_switched_off"] = NO_NOISE in kind
    return result


def _summary(c: dict[str, Any]) -> str:
    stated = f"stated eps {c['stated_epsilon']:.3g}, " if c.get("stated_epsilon") is not None else ""
    each = ", ".join(f"{name} {a['epsilon_lower_bound']:.2f} (ceiling {a['ceiling']:.2f})"
                     for name, a in c.get("attacks", {}).items())
    return (f"{stated}bound {c['empirical_epsilon_lower_bound']:.3f} ({c['best_correct']}/{c['best_guesses']} "
            f"right; {each}), {c['seconds']:.0f} s")


def markdown(record: dict[str, Any], dataset: str, settings: dict[str, Any], cells: dict[str, Any]) -> str:
    order = list(KINDS)
    cells = dict(sorted(cells.items(), key=lambda kv: (order.index(kv[0].split("/seed")[0]),
                                                       int(kv[0].split("/seed")[1]))))
    v = record["versions"]
    norm = settings["normalization"]
    lines = [
        f"# Canary audit on {dataset}: empirical lower bounds on epsilon, IPC {settings['ipc']}", "",
        *(f"Command: `{c}`  " for c in record.get("commands", [record["command"]])),
        f"Machine: {record['device_name']}; started {record['started_at']}; the cells took "
        f"{sum(c['seconds'] for c in cells.values()):.0f} s in all  ",
        f"Versions: fedcond {v.get('fedcond')}, torch {v.get('torch')}, opacus {v.get('opacus')}, "
        f"python {v.get('python')}  ",
        f"Protocol: {settings['canaries']} canaries (random training images; crafted random-pixel images in the "
        "'-crafted' rows); each is kept with probability 1/2 and the method distills the kept ones only. Attacks, "
        "all scored on the same run: blackbox = RMS pixel distance to the synthetic images of the canary's class, "
        "canaries that are some synthetic image's nearest canary first (sees copying only); whitebox = each "
        "canary's least-squares coefficient in its class's released noisy sum under DP-DM's public network bank; "
        "whitebox-inner = n_c <u_i - mean_c, T_c - mean_c> in the same space. The auditor guesses 'in' for the k "
        "best of a grid fixed in advance (1, 2, 5, 10, 20, 50 % of the canaries) and abstains on the rest. Bound: "
        f"Steinke, Nasr & Jagielski 2023 at {settings['confidence']:.0%} confidence per attack (Bonferroni over "
        f"the grid), delta {settings['delta']:g}. Attack ceiling: the bound if every canary the attack can single "
        "out were guessed right (blackbox: one per synthetic image of a class with kept canaries; whitebox: every "
        "kept canary); grid ceiling: k right out of every k. 'no-noise': DP-DM with its Gaussian noise switched "
        f"off (a broken mechanism; stated epsilon 1). DM: {settings['dm_iterations']} iterations; DP-DM: release, "
        f"{settings['dp_iterations']} matching iterations. Normalisation: public constants, mean {norm['mean']}, "
        f"std {norm['std']}.", "",
        "| set | seed | stated epsilon | attack | epsilon lower bound | best guesses (right / made) "
        "| attack ceiling (canaries it can single out) | grid ceiling | seconds |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in cells.items():
        kind, seed = name.split("/seed")
        stated = "-" if c["stated_epsilon"] is None else f"{c['stated_epsilon']:.3g}"
        for attack, a in _attacks(c).items():
            best = max(a["guesses"], key=lambda g: g["epsilon_lower_bound"])
            headline = "**" if attack == c.get("attack", "blackbox") else ""
            lines.append(f"| {kind} | {seed} | {stated} | {headline}{attack}{headline} | "
                         f"{headline}{a['epsilon_lower_bound']:.2f}{headline} | {best['correct']} / "
                         f"{best['guesses']} | {_ceiling(a)} | {c['largest_provable_bound']:.2f} | "
                         f"{c['seconds']:.0f} |")
    lines += ["", "Bold: the cell's headline attack (white-box where the method exposes its release). Every guess "
              "of every cell and attack (k: right / made, bound):", ""]
    for name, c in cells.items():
        for attack, a in _attacks(c).items():
            parts = ", ".join(f"{g['correct']}/{g['guesses']} ({g['epsilon_lower_bound']:.2f})" for g in a["guesses"])
            lines.append(f"- {name} {attack}: {parts}")
    return "\n".join(lines) + "\n"


def _attacks(cell: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A cell's attacks, the headline first (a cell of an older file: its one pixel attack)."""
    attacks = cell.get("attacks") or {"blackbox": {"epsilon_lower_bound": cell["empirical_epsilon_lower_bound"],
                                                   "guesses": cell["guesses"]}}
    head = cell.get("attack", "blackbox")
    return {head: attacks[head], **{k: v for k, v in attacks.items() if k != head}}


def _ceiling(attack: dict[str, Any]) -> str:
    return f"{attack['ceiling']:.2f} ({attack['ceiling_guesses']})" if "ceiling" in attack else "-"


if __name__ == "__main__":
    main()
