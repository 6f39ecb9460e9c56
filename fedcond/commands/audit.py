"""``fedcond audit``: what a synthetic set reveals about its training data (near-copies,
membership inference against random real images of the same size), with a verdict; or,
with ``--canary-method``, a method's empirical lower bound on ε from a canary audit
(:mod:`fedcond.audit.canary`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedcond.commands.common import console, existing_folder, set_threads, user_errors, writable_file
from fedcond.errors import FedcondError
from fedcond.synthetic import DEFAULT_MAX_BYTES

# What `fedcond audit PATH` writes shows real training images (the closest pairs) and membership
# figures of the training data: its JSON says so, and a note beside its files says it in words.
NOT_FOR_RELEASE = ("contains training data: the pairs picture shows real training images and the numbers are "
                   "measured on them; not for release (share the set, not its audit)")
NOTE_NAME = "AUDIT_CONTAINS_TRAINING_DATA.txt"


@user_errors
def command(
    path: Optional[Path] = typer.Argument(
        None, help="a synthetic.safetensors file (any set, a client's upload included); omit with --canary-method"
    ),
    dataset: str = typer.Option(..., "--dataset", "-d", help="the data set the set was made from"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="read the data set from this local mirror"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write every number as JSON here"),
    pairs: Optional[Path] = typer.Option(
        None,
        "--pairs",
        help="picture of the closest synthetic/training pairs "
        "(default: audit_pairs.png beside --json, else beside the set)",
    ),
    runs: int = typer.Option(
        2, "--runs", "-r", help="models trained on the set (and on random real images) and attacked"
    ),
    epochs: int = typer.Option(300, "--epochs", help="their training epochs (the evaluation protocol's 300)"),
    dsa: bool = typer.Option(False, "--dsa", help="train them with DSA, as fedcond evaluate --dsa"),
    dsa_strategy: str = typer.Option(
        "color_crop_cutout_flip_scale_rotate", "--dsa-strategy", help="DSA families joined by _"
    ),
    max_members: int = typer.Option(2000, "--max-members", help="random training images scored as members"),
    max_nonmembers: int = typer.Option(2000, "--max-nonmembers", help="random held-out images scored as non-members"),
    quantile: float = typer.Option(
        0.01, "--near-copy-quantile", help="near-copy threshold as the share of unseen images it flags"
    ),
    random_baseline: bool = typer.Option(
        True, "--random-baseline/--no-random-baseline", help="also audit random real images of the same size"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the samples and models (canary audit: of the canaries and "
                             "the method)"),
    canary_method: Optional[str] = typer.Option(
        None, "--canary-method", help="instead of a set: distill with this method on canaries (each kept with "
        "probability 1/2) and report its empirical epsilon lower bound"
    ),
    canaries: int = typer.Option(1000, "--canaries", help="canary audit: number of canaries"),
    attack: str = typer.Option(
        "auto", "--attack", help="canary audit: the score of the headline bound: whitebox (decoding the mechanism's "
        "release, dp-dm release), whitebox-inner (inner product in the same space), blackbox (pixels of the set "
        "file), auto (whitebox where the method exposes its release); every attack that applies is reported"
    ),
    crafted: bool = typer.Option(
        False, "--crafted/--real-canaries", help="canary audit: crafted canaries (random-pixel images, far apart in "
        "embedding space) instead of random training images"
    ),
    confidence: float = typer.Option(0.95, "--confidence", help="canary audit: confidence of the bound"),
    ipc: int = typer.Option(10, "--ipc", help="canary audit: images per class"),
    iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="canary audit: method iterations"),
    option: Optional[list[str]] = typer.Option(None, "--option", "-o", help="canary audit: method option key=value"),
    epsilon: Optional[float] = typer.Option(None, "--epsilon", help="canary audit of dp-dm: its epsilon"),
    delta: float = typer.Option(1e-5, "--delta", help="canary audit: the delta of the bound (and of dp-dm)"),
    normalize: Optional[str] = typer.Option(
        None, "--normalize", help="canary audit: public, train or MEAN:STD (default: the data set's; dp-dm: public)"
    ),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-bytes", help="refuse synthetic set files larger than this"),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for torch (1 is fastest on a busy machine)"
    ),
) -> None:
    """Audit a synthetic set for privacy: near-copies of training images and membership inference."""
    from fedcond.audit.memorisation import pixels, save_pairs
    from fedcond.audit.set_audit import AuditConfig, audit_set
    from fedcond.data import load_dataset, under_normalization
    from fedcond.evaluate import EvalConfig
    from fedcond.runinfo import run_record, write_json
    from fedcond.synthetic import SyntheticSet

    set_threads(threads)
    if canary_method is not None:
        if path is not None:
            raise FedcondError("give either a set PATH or --canary-method, not both")
        _canary_audit(canary_method, dataset, data_dir, json_out, canaries, confidence, ipc, iterations, option,
                      epsilon, delta, normalize, seed, attack, crafted)
        return
    if path is None:
        raise FedcondError("nothing to audit: give a synthetic set PATH, or --canary-method METHOD")
    if epochs < 1:
        raise FedcondError(f"--epochs must be >= 1, got {epochs}")
    pairs_path = pairs or ((json_out.parent if json_out else path.parent) / "audit_pairs.png")
    if json_out is not None:
        writable_file(json_out, "--json")
    writable_file(pairs_path, "--pairs" if pairs else "the pairs picture (--pairs)")
    existing_folder(data_dir)
    config = AuditConfig(runs=runs, eval=EvalConfig(epochs=epochs, dsa=dsa, dsa_strategy=dsa_strategy),
                         max_members=max_members, max_nonmembers=max_nonmembers, near_copy_quantile=quantile,
                         random_baseline=random_baseline, seed=seed)
    sset = SyntheticSet.load(path, max_bytes=max_bytes)
    data = under_normalization(load_dataset(dataset, data_dir=data_dir), sset.mean, sset.std)
    if sset.dataset != data.name:
        console.print(
            f"[yellow]note:[/] the set says it was made from {sset.dataset!r}; auditing against {data.name!r}"
        )
    console.print(f"[bold]audit[/] {path}: {sset.method}, {sset.num_images} images, against {data.name} "
                  f"({data.train_images.shape[0]} train, {data.test_images.shape[0]} held-out)")
    report = audit_set(sset, data, config, on_step=lambda text: console.print(f"  {text}"))
    result = report.to_json()

    save_pairs(pixels(sset.images, sset.mean, sset.std), pixels(data.train_images, data.mean, data.std),
               report.synthetic.memorisation, sset.image_shape, pairs_path)
    result["pairs_png"] = str(pairs_path)
    result["contains_training_data"], result["not_for_release"] = True, NOT_FOR_RELEASE
    written = [pairs_path]
    _print_table(result)
    typer.echo(report.verdict)
    if json_out is not None:
        write_json(json_out, {**result, "record": run_record(data.device, set_path=str(path))})
        written.insert(0, json_out)
    for folder in dict.fromkeys(p.parent for p in written):
        note = folder / NOTE_NAME
        note.write_text(f"fedcond audit of {path.name}: {NOT_FOR_RELEASE}.\nFiles: "
                        + ", ".join(p.name for p in written if p.parent == folder) + "\n")
        written.append(note)
    typer.echo(f"wrote {', '.join(map(str, written))} in {report.seconds:.0f} s ({NOT_FOR_RELEASE})")


def _print_table(result: dict) -> None:
    """The headline numbers, the set beside random real images of the same size."""
    from rich.table import Table

    table = Table(title="privacy audit")
    table.add_column("")
    table.add_column("this set", justify="right")
    table.add_column("random real, same size", justify="right")
    syn, real = result["synthetic"], result.get("random_real") or {}

    def fmt(value: object, pct: bool = False) -> str:
        if value is None:
            return "-"
        return f"{value:.1%}" if pct else f"{value:.3f}"

    for label, key, pct in (("near-copy share", "near_copy_share", True),
                            ("membership AUC (worst group)", "membership_auc", False),
                            ("TPR at 1% FPR (worst group)", "membership_tpr_at_1pct_fpr", True),
                            ("membership AUC, all training images", "membership_auc_all_members", False),
                            ("membership AUC, seed images", "membership_auc_seed_members", False),
                            ("test accuracy", "test_accuracy_mean", True)):
        table.add_row(label, fmt(syn.get(key), pct), fmt(real.get(key), pct))
    if result.get("epsilon") is not None:
        table.caption = f"DP guarantee: epsilon {result['epsilon']:.3g}, delta {result['set']['privacy']['delta']:.3g}"
    console.print(table)
    console.print(f"  seed images: {syn['seed_members']}")


def _canary_audit(method: str, dataset: str, data_dir: Path | None, json_out: Path | None, canaries: int,
                  confidence: float, ipc: int, iterations: int | None, option: list[str] | None,
                  epsilon: float | None, delta: float, normalize: str | None, seed: int, attack: str = "auto",
                  crafted: bool = False) -> None:
    """``fedcond audit --canary-method``: one canary audit, its table, bound and JSON."""
    if json_out is not None:
        writable_file(json_out, "--json")
    existing_folder(data_dir)
    from fedcond.audit.canary import CanaryConfig, canary_audit, resolve_attack
    from fedcond.commands.common import parse_options
    from fedcond.data import load_dataset
    from fedcond.distill import make_distiller
    from fedcond.privacy.normalisation import public_normalisation
    from fedcond.runinfo import run_record, write_json

    config = CanaryConfig(canaries=canaries, confidence=confidence, delta=delta, seed=seed, attack=attack,
                          crafted=crafted)
    budget = {"delta": delta, **({"epsilon": epsilon} if epsilon is not None else {})}  # where the method has them
    # model None: the method's own network, as no flag here chooses one (nor may -o)
    distiller, method_config = make_distiller(
        method, parse_options(option), fixed={"ipc": ipc, "model": None, "iterations": iterations, **budget})
    attack = resolve_attack(distiller.name, method_config, attack)  # refused before any data are read
    if not distiller.private and epsilon is not None:
        raise FedcondError(f"--epsilon is for a DP method; {method} has none")
    if distiller.private:  # the method checks the data it is given too; this picks the default and fails early
        normalize = public_normalisation(normalize, method)
    data = load_dataset(dataset, data_dir=data_dir, normalize=normalize)
    if canaries > data.train_labels.numel():
        raise FedcondError(f"--canaries {canaries} is more than the {data.train_labels.numel()} training images")
    console.print(f"[bold]canary audit[/] of {method} on {data.name}: {canaries} {'crafted' if crafted else 'real'} "
                  f"canaries, each kept with probability 1/2; headline attack {attack}")
    audit, _ = canary_audit(data, distiller, method_config, config, seed, "cpu",
                            on_step=lambda text: console.print(f"  {text}"))
    result = audit.to_json()
    _print_guesses(result)
    stated = f" (stated epsilon {result['stated_epsilon']:.3g})" if result["stated_epsilon"] is not None else ""
    typer.echo(f"empirical epsilon lower bound {result['empirical_epsilon_lower_bound']:.3f} ({attack}) at "
               f"{confidence:.0%} confidence, delta {delta:g}{stated}; the most this attack can show is "
               f"{result['attack_ceiling']:.2f} (the grid's {result['largest_provable_bound']:.2f})")
    for name, other in result["attacks"].items():
        if name != attack:
            typer.echo(f"  {name}: {other['epsilon_lower_bound']:.3f} (its ceiling {other['ceiling']:.2f})")
    if json_out is not None:
        write_json(json_out, {**result, "dataset": data.name, "record": run_record(data.device)})
        typer.echo(f"wrote {json_out} in {audit.seconds:.0f} s")


def _print_guesses(result: dict) -> None:
    """The grid of guesses: how many were right and the bound each proves."""
    from rich.table import Table

    table = Table(title=f"canary audit ({result['canaries']} canaries, {result['canaries_included']} kept)")
    for name in ("guessed in", "correct", "epsilon lower bound"):
        table.add_column(name, justify="right")
    for g in result["guesses"]:
        table.add_row(str(g["guesses"]), str(g["correct"]), f"{g['epsilon_lower_bound']:.3f}")
    console.print(table)
