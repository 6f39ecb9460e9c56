"""argparse options made from a config dataclass's fields, so a benchmark re-declares no setting.

Each option takes its flag (``--num-clients`` for ``num_clients``), type and default from the
field of the config class (``FederateConfig``, ``ContinualConfig``), and its help from the
field's own (``metadata["help"]``, as ``fedcond federate``'s options do:
:mod:`fedcond.commands.config_options`) or from the ``fedcond`` command's option of the same
name (``fedcond continual compare``). A benchmark states only where its default differs from
the config's (a benchmark-sized run), and says why beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any, Callable, Mapping, Sequence

_TYPES = {"str": str, "int": int, "float": float}


def command_help(command: Callable[..., Any]) -> dict[str, str]:
    """The help text of each option of a typer command, by parameter name."""
    params = inspect.signature(command).parameters  # follows functools.wraps to the declared options
    return {name: p.default.help for name, p in params.items() if getattr(p.default, "help", None)}


def add_config_options(
    parser: argparse.ArgumentParser,
    config_class: type,
    names: Sequence[str],
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
    flags: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Add ``--<name>`` for each field in ``names`` of ``config_class``; return ``names``
    (the parsed values are ``{name: getattr(args, name) for name in names}``).

    ``defaults``: the benchmark's own defaults where they differ from the config's;
    ``helps``: help texts by field where they differ from the field's own (e.g. :func:`command_help`
    of the matching command);
    ``flags``: other flags for a field (e.g. a short ``-o``). The help shows the default
    (a None default is the config's own choice, which the help text should explain).
    """
    by_name = {f.name: f for f in dataclasses.fields(config_class)}
    for name in names:
        f = by_name[name]  # a KeyError names a setting the config does not have
        default = (defaults or {}).get(name, f.default)
        kind = f.type.removesuffix(" | None")
        text = (helps or {}).get(name) or f.metadata.get("help") or name.replace("_", " ")
        text = text.replace("%", "%%")  # argparse formats help with %
        if default is not None:  # None: the help says what applies instead
            text += f" (default: {default!r})" if default == "" else f" (default: {default})"
        options = list((flags or {}).get(name, ())) + [f"--{name.replace('_', '-')}"]
        if kind == "bool":
            parser.add_argument(*options, dest=name, default=default, help=text,
                                action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(*options, dest=name, default=default, help=text, type=_TYPES[kind])
    return list(names)
