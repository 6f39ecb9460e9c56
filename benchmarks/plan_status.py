"""The status of a benchmark plan: every planned cell, its number where a results file has it,
else "not run" with the reason and the command that runs it.

A plan (``configs/*_plan.toml``, data, not code) names tables of cells. Each row points into a
results JSON that a benchmark script writes (``file``) with one *path* per column: a list of
keys, list indices, or ``{field = value}`` tables that pick the list element whose fields
match. A string key may hold ``{0}``, ``{1}``, ...: the ``|``-separated parts of the
column's entry in the table's ``keys`` (``"0.5|2"`` fills ``"alpha={0}"`` and ``"seed={1}"``);
so may a row's ``command``, which the page then prints once per column (a budget, a seed).
The page is rebuilt from the results files alone, so a cell turns from "not run" into its
number once its command has run::

    python benchmarks/plan_status.py configs/cifar10_plan.toml

writes the plan's ``out`` (a Markdown page) and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN = "not run"
NOT_APPLICABLE = "–"


def lookup(document: Any, path: list[Any], key: str = "") -> Any:
    """The value at ``path`` in a parsed JSON ``document``, or None where any step is missing.

    Steps: a string key of an object (``{0}``, ``{1}``, ... replaced by the ``|``-separated
    parts of ``key``), an int index of a list, or a dict of fields selecting the first list
    element that has them all."""
    value, parts = document, key.split("|")
    for step in path:
        if isinstance(step, dict):  # fields compare as text, so "{0}" can select mem_size 200
            if not isinstance(value, list):
                return None
            want = {k: str(v).format(*parts) for k, v in step.items()}
            value = next((e for e in value if isinstance(e, dict) and all(str(e.get(k)) == v for k, v in want.items())),
                         None)
        elif isinstance(step, int):
            value = value[step] if isinstance(value, list) and -len(value) <= step < len(value) else None
        else:
            value = value.get(step.format(*parts)) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def _read(results_dir: Path, file: str, key: str, cache: dict[str, Any]) -> Any:
    """The parsed results file ``file`` (which may hold ``{0}``... like a path step), None if absent."""
    name = file.format(*key.split("|"))
    if name not in cache:
        path = results_dir / name
        cache[name] = json.loads(path.read_text()) if path.is_file() else None
    return cache[name]


def cell_text(value: Any, fmt: str) -> str:
    """A found value in the row's format (numbers), else "not run"."""
    if value is None:
        return NOT_RUN
    return format(value, fmt) if isinstance(value, (int, float)) and fmt else str(value)


def row_commands(command: str | None, keys: list[str]) -> list[str]:
    """A row's command once per column key, ``{0}``, ``{1}``, ... replaced by the key's ``|``-separated parts
    (a budget, a seed), in column order without repeats; the command itself where it has no placeholder.
    Only those exact tokens are replaced, so JSON braces in a command stay as they are."""
    if command is None:
        return []
    out: list[str] = []
    for key in keys or [""]:
        text = command
        for i, part in enumerate(key.split("|")):
            text = text.replace("{%d}" % i, part)
        if text not in out:
            out.append(text)
    return out


def render(plan: dict[str, Any], results_dir: Path) -> tuple[str, int, int]:
    """The plan's page, with (cells measured, cells planned)."""
    lines: list[str] = []
    measured = planned = 0
    cache: dict[str, Any] = {}
    for table in plan["table"]:
        columns, keys = table["columns"], table.get("keys", [""] * len(table["columns"]))
        if len(keys) != len(columns):
            raise SystemExit(f"table {table['title']!r}: {len(keys)} keys for {len(columns)} columns")
        lines += [f"## {table['title']}", ""]
        if table.get("note"):
            lines += [table["note"].strip(), ""]
        lines += ["| cell | " + " | ".join(columns) + " | results file | where not run: why; command |",
                  "|---|" + "---:|" * len(columns) + "---|---|"]
        for row in table["row"]:
            paths = row["paths"] if "paths" in row else [row["path"]] * len(columns)
            if len(paths) != len(columns):
                raise SystemExit(f"row {row['cell']!r}: {len(paths)} paths for {len(columns)} columns")
            fmt = row.get("format", table.get("format", ""))
            # "-": a column that does not apply to this row (e.g. random real images have no budget)
            texts = [
                NOT_APPLICABLE if p == "-" else cell_text(lookup(_read(results_dir, row["file"], k, cache), p, k), fmt)
                for p, k in zip(paths, keys)
            ]
            planned += sum(t != NOT_APPLICABLE for t in texts)
            measured += sum(t not in (NOT_RUN, NOT_APPLICABLE) for t in texts)
            # a row without its own command is run by the table's (printed under the table)
            how = [] if NOT_RUN not in texts else [row.get("reason", table.get("reason", ""))]
            how += [f"`{c}`" for c in row_commands(row.get("command"), [k for p, k in zip(paths, keys) if p != "-"])]
            lines.append(f"| {row['cell']} | " + " | ".join(texts) + f" | `{row['file']}` | {'; '.join(how)} |")
        lines.append("")
        if "command" in table:
            lines += ["Command of the rows above:", "", "```bash", table["command"].strip(), "```", ""]
    head = [f"# {plan['title']}", "", plan.get("intro", "").strip(), "",
            f"Rebuilt from the results files by `python benchmarks/plan_status.py {plan['source']}`; a cell reads "
            f"\"{NOT_RUN}\" until the command of its row has written it. **{measured} of {planned} cells "
            "measured.**", ""]
    return "\n".join(head + lines), measured, planned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path, help="a plan TOML, e.g. configs/cifar10_plan.toml")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder of the results JSON files (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if not args.plan.is_file():
        parser.error(f"no plan file {args.plan}")
    plan = tomllib.loads(args.plan.read_text())
    plan["source"] = args.plan.as_posix()
    text, _, _ = render(plan, args.results)
    out = args.results / plan["out"]
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
