"""Pieces the CLI commands share: user-error handling, checks of paths before any work,
progress bars, option parsing."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedcond.errors import FedcondError

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True)


def user_errors(func: F) -> F:
    """Turn a FedcondError into one ``error: ...`` line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FedcondError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


PROBE_PREFIX = ".fedcond-probe-"


def _probe(folder: Path, file: Path | None = None) -> str | None:
    """Why ``folder`` cannot be (made into) a folder this process writes in (and ``file``, a
    file in it, cannot be written); None when it can.

    A probe, not a guess from permission bits (root passes those everywhere, and /proc or a
    read-only mount refuse anyway): it creates the missing folders, writes and deletes a small
    file there (``file`` itself when it does not exist yet), and removes the folders it
    created, so the real write later fails only if the disk changes meanwhile, and a command
    that stops for another reason leaves nothing behind."""
    existing, missing = folder, []
    while not existing.exists() and existing.parent != existing:
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    created: list[Path] = []
    try:
        for path in reversed(missing):
            try:
                path.mkdir()
            except OSError as err:
                return f"cannot create {path} ({err.strerror or err})"
            created.append(path)
        try:
            if file is not None and not file.exists():
                with open(file, "xb") as handle:
                    handle.write(b"fedcond")
                file.unlink()
            else:
                fd, name = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=folder)
                try:
                    os.write(fd, b"fedcond")
                finally:
                    os.close(fd)
                    os.unlink(name)
        except OSError as err:
            return f"cannot write in {folder} ({err.strerror or err})"
    finally:
        for path in reversed(created):
            with suppress(OSError):
                path.rmdir()
    return None


def writable_folder(path: Path, flag: str = "--out") -> Path:
    """Prove, before any work, that ``path`` is or can become a folder this process writes in
    (:func:`_probe`); a ``FedcondError`` naming ``flag`` otherwise. Leaves nothing behind."""
    problem = _probe(path)
    if problem:
        raise FedcondError(f"{flag} {path} cannot be used: {problem}; choose another folder")
    return path


def writable_file(path: Path, flag: str) -> Path:
    """Prove, before any work, that a file can be written at ``path`` (:func:`_probe`; an
    existing file is opened for appending, which changes nothing)."""
    if path.is_dir():
        raise FedcondError(f"{flag} {path} is a folder; give a file name")
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as err:
            raise FedcondError(f"{flag} {path} is not writable ({err.strerror or err}); choose another file") from None
        return path
    problem = _probe(path.parent, path)
    if problem:
        raise FedcondError(f"{flag} {path} cannot be written: {problem}; choose another path")
    return path


def known_dataset(name: str) -> str:
    """``name`` must be a data set fedcond knows or an existing path (an ImageFolder tree or
    archive): checked before any header or folder (loading it is the work, and may download)."""
    from fedcond.data import DATASET_NAMES  # torch: only once the command runs

    if name.lower().replace("_", "-") in DATASET_NAMES or Path(name).exists():
        return name
    raise FedcondError(f"unknown dataset {name!r}: use one of {', '.join(DATASET_NAMES)} "
                       "or a path to an ImageFolder tree / .tar.gz (train/<class>/*, test/<class>/*)")


def existing_folder(path: Path | None, flag: str = "--data-dir") -> Path | None:
    """``path`` (None passes) must be an existing folder: checked before any work."""
    if path is not None and not path.is_dir():
        raise FedcondError(f"{flag} {path}: no such folder" if not path.exists() else
                           f"{flag} {path} is a file; give the folder that holds the data set's files")
    return path


def existing_file(path: Path | None, flag: str) -> Path | None:
    """``path`` (None passes) must be an existing file: checked before any work."""
    if path is not None and not path.is_file():
        raise FedcondError(f"{flag} {path}: no such file" if not path.exists() else f"{flag} {path} is not a file")
    return path


@contextmanager
def progress_bar(description: str, total: int | None = None, timed: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields ``update(completed, total=None, **metrics)``.

    Metrics (e.g. loss; numbers or text) are shown beside the bar. The bar is drawn on stderr so stdout
    stays clean for tables and JSON. ``timed=False`` leaves out the elapsed and remaining time
    (a DP run's time grows with the size of the private data).
    """
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"), *((TimeElapsedColumn(), TimeRemainingColumn()) if timed else ()),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, metrics="")

        def update(completed: int, total: int | None = None, **metrics: float | str) -> None:
            text = "  ".join(f"{k} {v}" if isinstance(v, str) else f"{k} {v:.4g}" for k, v in metrics.items())
            progress.update(task, completed=completed, total=total, metrics=text)

        yield update


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None: leave torch's default); 1 is fastest on a busy small machine."""
    if threads is None:
        return
    if threads < 1:
        raise FedcondError(f"--threads must be >= 1, got {threads}")
    import torch  # commands import torch lazily

    torch.set_num_threads(threads)


def parse_options(options: list[str] | None) -> dict[str, Any]:
    """``key=value`` strings to a dict; values are read as JSON when they parse (numbers, bools)."""
    out: dict[str, Any] = {}
    for item in options or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FedcondError(f"--option expects key=value, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = raw
    return out
