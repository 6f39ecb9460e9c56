"""``fedcond info``: what is in a synthetic set file, and its exact size."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from fedcond.commands.common import user_errors
from fedcond.synthetic import DEFAULT_MAX_BYTES, SyntheticSet


@user_errors
def command(
    path: Path = typer.Argument(..., help="a synthetic.safetensors file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    max_bytes: int = typer.Option(DEFAULT_MAX_BYTES, "--max-bytes", help="refuse files larger than this"),
) -> None:
    """Describe a synthetic set: method, shapes, labels, classes and exact bytes."""
    sset = SyntheticSet.load(path, max_bytes=max_bytes)
    info = {
        "path": str(path),
        "method": sset.method,
        "dataset": sset.dataset,
        "ipc": sset.ipc,
        "num_images": sset.num_images,
        "image_shape": list(sset.image_shape),
        "storage_dtype": sset.storage_dtype,
        "factor": sset.factor,  # > 1: each image is a factor x factor mosaic of training images
        "labels": "soft" if sset.soft_labels else "hard",
        "nbytes": sset.nbytes,
        "file_bytes": path.stat().st_size,
        "seed": sset.seed,
        "class_counts": dict(zip(sset.classes, sset.class_counts())),
        "config": sset.config,
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=str(path), show_header=False)
    for key, value in info.items():
        if key not in ("path", "config", "class_counts"):
            table.add_row(key, str(value))
    table.add_row("classes", ", ".join(f"{c}:{n}" for c, n in info["class_counts"].items()))
    table.add_row("config", json.dumps(sset.config))
    Console().print(table)
