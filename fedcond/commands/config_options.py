"""typer options made from a config dataclass's fields, so a command re-declares no setting.

Each option takes its flag (``--num-clients`` for ``num_clients``), type, default and help
from the field (:func:`fedcond.federated.config.setting`: ``metadata["help"]``, further
flags such as ``-d``, a bool's negative flag). The option's own default is None, "not
given": the command passes on what was given, so a config file's value or the field's
default applies otherwise; ``--help`` shows the field's default. ``benchmarks/config_options.py``
makes argparse options from the same fields.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def shown_default(f: Field) -> str | bool:
    """What ``--help`` shows as a field's default: its value (a bool as on/off); True (typer's
    own, which shows nothing for None) where the help text says what applies instead (None,
    an empty string, a switch without a negative flag)."""
    if f.default is MISSING or f.default in (None, "") or (f.type == "bool" and f.metadata.get("off") is None):
        return True
    return ("on" if f.default else "off") if isinstance(f.default, bool) else str(f.default)


def field_option(f: Field) -> inspect.Parameter:
    """The typer option of one config field, as a keyword parameter of the command."""
    kind = f.type.removesuffix(" | None")
    flag = f"--{f.name.replace('_', '-')}"
    if kind == "bool" and f.metadata.get("off") is not None:
        flag = f"{flag}/{f.metadata['off'] or '--no-' + flag[2:]}"
    option = typer.Option(None, flag, *f.metadata.get("flags", ()), help=f.metadata.get("help"),
                          show_default=shown_default(f))
    annotation = Optional[Path if f.metadata.get("path") else _TYPES[kind]]
    return inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=annotation)


def config_options(config_class: type, layout: Sequence[str]) -> Callable[[F], F]:
    """Give a typer command an option per field of ``config_class`` named in ``layout``.

    ``layout`` lists the command's options in ``--help``'s order: field names, and the
    command's own parameters (those not from the config, e.g. ``out``) where they go. The
    command takes the fields' values as ``**settings`` (None: not given).
    """
    by_name = {f.name: f for f in fields(config_class)}

    def decorate(command: F) -> F:
        own = {name: p for name, p in inspect.signature(command).parameters.items()
               if p.kind is not inspect.Parameter.VAR_KEYWORD}
        missing = sorted(set(own) - set(layout))
        if missing:
            raise TypeError(f"{command.__name__}: parameters {', '.join(missing)} are not in the options' layout")
        params = [own[name].replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) if name in own
                  else field_option(by_name[name]) for name in layout]
        command.__signature__ = inspect.Signature(params)  # what typer (and inspect) read as the options
        return command

    return decorate
