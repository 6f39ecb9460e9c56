"""The ``fedcond`` command line: a typer app whose commands live in ``fedcond.commands``."""

from __future__ import annotations

import importlib
import sys

import click
import typer

from fedcond.commands import COMMANDS

app = typer.Typer(
    name="fedcond",
    help="Federated and continual learning built on dataset distillation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in COMMANDS:
    _module = importlib.import_module(f"fedcond.commands.{_name}")
    app.command(name=_name, help=_module.command.__doc__)(_module.command)


def main() -> None:
    """Entry point: run the app; usage errors become one line, not a box of help."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="fedcond", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError:
        code = 0  # click has already printed the help
    except click.UsageError as err:
        hint = f" (see 'fedcond {err.ctx.info_name if err.ctx and err.ctx.parent else ''} --help')".replace("  ", " ")
        typer.echo(f"error: {err.format_message()}{hint}", err=True)
        code = 2
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
