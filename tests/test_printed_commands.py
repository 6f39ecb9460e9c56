"""Every benchmark command the repository prints (the CIFAR-10 plan page, docs/, the README and the
``Command:`` line of each results page) is one its script still accepts, pasted as is from the repository
root of a fresh clone: each runs up to its argument parsing."""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shlex
import sys
import tomllib

import pytest

from benchmark_scripts import BENCHMARKS, load_script  # tests/, a test-only helper

ROOT = BENCHMARKS.parent


class _Parsed(Exception):
    """Raised in place of running a script once its arguments parsed."""


_PARSE_ARGS = argparse.ArgumentParser.parse_args  # argparse's own, before any test patches it


def _shell_commands(text: str) -> list[list[str]]:
    """The commands of a plan's command text as the argv lists bash would run: continuation lines joined,
    comments dropped, ``NAME="..."`` assignments expanded where ``$NAME`` is used."""
    variables: dict[str, str] = {}
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        for name in sorted(variables, key=len, reverse=True):
            line = line.replace(f"${name}", variables[name])
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]):
            name, value = words[0].split("=", 1)
            variables[name] = value
        elif words:
            commands.append(words)
    return commands


def test_shell_commands_expand_variables_and_drop_comments():
    text = 'B="--a 1 --b \'x y\'"\npython s.py run $B \\\n    --c 2   # why\n# a comment line\nbash t.sh 60\n'
    assert _shell_commands(text) == [["python", "s.py", "run", "--a", "1", "--b", "x y", "--c", "2"],
                                     ["bash", "t.sh", "60"]]


def _parse_only(argv: list[str], monkeypatch) -> argparse.Namespace:
    """Run ``python benchmarks/<script>.py ...`` up to its argument parsing: the parsed namespace, or the
    test fails with argparse's complaint."""
    name = argv[1].removeprefix("benchmarks/").removesuffix(".py")
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as `python benchmarks/x.py` puts its folder first
    module = load_script(name)

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(_PARSE_ARGS(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", argv[1:])
    try:
        module.main(argv[2:]) if inspect.signature(module.main).parameters else module.main()
    except _Parsed as parsed:
        return parsed.args[0]
    except SystemExit as exit_:
        pytest.fail(f"{shlex.join(argv)}: its script refused the arguments (exit {exit_.code})")
    finally:
        sys.modules.pop(name, None)
    pytest.fail(f"{shlex.join(argv)}: {name}.main() returned without parsing its arguments")


def test_every_cifar10_plan_command_pastes_as_is(monkeypatch):
    """The page promises the command that runs each cell: each must be a command line its script accepts,
    from the repository root of a fresh clone (no placeholders, no prose, files it names present)."""
    plan = tomllib.loads((ROOT / "configs" / "cifar10_plan.toml").read_text())
    row_commands = load_script("plan_status").row_commands
    sys.modules.pop("plan_status", None)
    texts = []
    for table in plan["table"]:
        texts += [table["command"]] if "command" in table else []
        keys = table.get("keys", [""] * len(table["columns"]))
        for row in table["row"]:
            paths = row.get("paths", [row.get("path")] * len(keys))
            texts += row_commands(row.get("command"), [k for p, k in zip(paths, keys) if p != "-"])
    checked: dict[str, int] = {}
    monkeypatch.chdir(ROOT)
    for text in texts:
        for argv in _shell_commands(text):
            assert not [w for w in argv if "$" in w or "{0}" in w or re.fullmatch(r"[A-Z][A-Z_]+", w)], argv
            named = [w for w in argv[1:] if w.startswith("benchmarks/")]
            assert all((ROOT / w).exists() for w in named), argv
            if argv[0] == "python":
                assert argv[1].startswith("benchmarks/") and argv[1].endswith(".py"), argv
                _parse_only(argv, monkeypatch)
            else:  # a shell script of benchmarks/
                assert argv[0].startswith("benchmarks/") and os.access(ROOT / argv[0], os.X_OK), argv
            script = argv[1] if argv[0] == "python" else argv[0]
            checked[script] = checked.get(script, 0) + 1
    assert {"benchmarks/time_to_accuracy.py", "benchmarks/federated_benchmark.py",
            "benchmarks/continual_benchmark.py", "benchmarks/kd_relabel_cifar10.sh"} <= set(checked), checked


def _doc_commands(text: str) -> list[list[str]]:
    """The ``python benchmarks/...`` commands of a Markdown page: in its bash code blocks, and in inline code
    (which Markdown may wrap over lines); leading ``NAME=value`` environment settings dropped."""
    texts = re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, re.M | re.S)
    texts += [span.replace("\n", " ") for span in re.findall(r"`(python benchmarks/[^`]+)`", text)]
    commands = []
    for argv in (a for t in texts for a in _shell_commands(t)):
        while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):
            argv = argv[1:]
        if argv[:1] == ["python"] and argv[1].startswith("benchmarks/"):
            commands.append(argv)
    return commands


def test_every_benchmark_command_in_the_docs_parses_with_its_script(monkeypatch):
    """docs/ and the README print the commands behind their numbers: each must still be accepted by its script."""
    monkeypatch.chdir(ROOT)
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    commands = [argv for page in pages for argv in _doc_commands(page.read_text())]
    assert len(commands) >= 15  # the CIFAR-10 sequences of docs/benchmarks.md alone hold 17
    for argv in commands:
        _parse_only(argv, monkeypatch)


def test_the_command_line_of_every_results_page_parses_with_its_script(monkeypatch):
    """A results page's ``Command:`` line is how a reader reruns its numbers."""
    monkeypatch.chdir(ROOT)
    commands = []
    for page in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        for line in re.findall(r"^Command: `([^`]+)`", page.read_text(), re.M):
            line = "python " + line if line.startswith("benchmarks/") else line  # older pages left it out
            if line.startswith("python benchmarks/"):
                commands.append(shlex.split(line))
    assert len(commands) >= 30, len(commands)
    for argv in commands:
        _parse_only(argv, monkeypatch)
