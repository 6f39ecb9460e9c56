"""``fedcond audit``: what a synthetic set reveals about its training data (near-copies,
membership inference against random real images of the same size), with a verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fedcond.commands.common import console, existing_folder, set_threads, user_errors, writable_file
from fedcond.errors import FedcondError
from fedcond.synthetic import DEFAULT_MAX_BYTES


@user_errors
def command(
    path: Path = typer.Argument(..., help="a synthetic.safetensors file (any set, a client's upload included)"),
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
    seed: int = typer.Option(0, "--seed", help="seed of the samples and models"),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-bytes", help="refuse synthetic set files larger than this"),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="CPU threads for torch (1 is fastest on a busy machine)"
    ),
) -> None:
    """Audit a synthetic set for privacy: near-copies of training images and membership inference."""
    from fedcond.data import load_dataset  # noqa: PLC0415
    from fedcond.evaluate import EvalConfig  # noqa: PLC0415
    from fedcond.privacy.audit import AuditConfig, audit_set  # noqa: PLC0415
    from fedcond.privacy.memorisation import pixels, save_pairs  # noqa: PLC0415
    from fedcond.runinfo import run_record, write_json  # noqa: PLC0415
    from fedcond.synthetic import SyntheticSet  # noqa: PLC0415

    set_threads(threads)
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
    data = load_dataset(dataset, data_dir=data_dir)
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
    _print_table(result)
    typer.echo(report.verdict)
    if json_out is not None:
        write_json(json_out, {**result, "record": run_record(data.device, set_path=str(path))})
        typer.echo(f"wrote {json_out}, {pairs_path} in {report.seconds:.0f} s")
    else:
        typer.echo(f"wrote {pairs_path} in {report.seconds:.0f} s")


def _print_table(result: dict) -> None:
    """The headline numbers, the set beside random real images of the same size."""
    from rich.table import Table  # noqa: PLC0415

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
