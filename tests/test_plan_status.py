"""benchmarks/plan_status.py: a plan's cells read from results files, "not run" where missing."""

from __future__ import annotations

import json
import sys
import tomllib

from benchmark_scripts import BENCHMARKS, load_script  # tests/, a test-only helper

ROOT = BENCHMARKS.parent


def _script():
    module = load_script("plan_status")
    sys.modules.pop("plan_status", None)
    return module


def test_lookup_follows_keys_indices_and_field_selectors():
    lookup = _script().lookup
    doc = {"settings": {"alpha=0.5": {"seed=1": {"summary": [{"cell": "a", "acc": 0.1}, {"cell": "b", "acc": 0.2}]}}},
           "runs": [{"strategy": "x", "mem_size": 200, "acc": 0.7}]}
    assert lookup(doc, ["settings", "alpha={0}", "seed={1}", "summary", {"cell": "b"}, "acc"], "0.5|1") == 0.2
    assert lookup(doc, ["runs", {"strategy": "x", "mem_size": "{0}"}, "acc"], "200") == 0.7  # text compares to int
    assert lookup(doc, ["runs", 0, "acc"]) == 0.7
    assert lookup(doc, ["runs", 3, "acc"]) is None and lookup(doc, ["runs", {"strategy": "y"}, "acc"]) is None
    assert lookup(doc, ["settings", "alpha={0}", "seed={1}"], "0.1|0") is None
    assert lookup(None, ["runs"]) is None


def test_page_shows_numbers_not_run_and_the_count(tmp_path):
    render = _script().render
    (tmp_path / "r_15.json").write_text(json.dumps({"acc": 0.51234}))
    plan = {
        "title": "T", "out": "x.md", "source": "configs/x.toml",
        "table": [{
            "title": "one", "columns": ["15 min", "60 min", "other"], "keys": ["15", "60", "x"], "format": ".3f",
            "reason": "CPU time", "command": "run-all",
            "row": [{"cell": "budgeted", "file": "r_{0}.json", "paths": [["acc"], ["acc"], "-"]},
                    {"cell": "own command", "file": "absent.json", "path": ["acc"], "command": "run-me"}],
        }],
    }
    text, measured, planned = render(plan, tmp_path)
    assert (measured, planned) == (1, 5)
    assert "| budgeted | 0.512 | not run | – | `r_{0}.json` | CPU time |" in text
    assert "| own command | not run | not run | not run | `absent.json` | CPU time; `run-me` |" in text
    assert "**1 of 5 cells measured.**" in text and "run-all" in text


def test_a_row_command_is_printed_once_per_column_with_its_key():
    row_commands = _script().row_commands
    assert row_commands("run.sh {0}", ["15", "60", "120"]) == ["run.sh 15", "run.sh 60", "run.sh 120"]
    assert row_commands("x --alpha {0} --seed {1}", ["0.5|0", "0.5|1"]) == ["x --alpha 0.5 --seed 0",
                                                                            "x --alpha 0.5 --seed 1"]
    assert row_commands("""x -o '{"a": 1}'""", ["15", "60"]) == ["""x -o '{"a": 1}'"""]  # JSON kept, once
    assert row_commands(None, ["15"]) == []


def test_cifar10_plan_reads_every_results_file_it_names_that_exists():
    render, lookup = _script().render, _script().lookup
    plan = tomllib.loads((ROOT / "configs" / "cifar10_plan.toml").read_text())
    results = ROOT / "benchmarks" / "results"
    found: dict[str, int] = {}
    for table in plan["table"]:
        keys = table.get("keys", [""] * len(table["columns"]))
        for row in table["row"]:
            paths = row.get("paths", [row.get("path")] * len(keys))
            assert len(paths) == len(keys), row["cell"]
            for p, k in zip(paths, keys):
                name = row["file"].format(*k.split("|"))
                if p != "-" and (results / name).is_file():
                    hit = lookup(json.loads((results / name).read_text()), p, k) is not None
                    found[name] = found.get(name, 0) + hit
    # a typo in a path would leave an existing file with no number read from it
    assert found and all(found.values()), {n: c for n, c in found.items() if not c}
    text, measured, planned = render({**plan, "source": "configs/cifar10_plan.toml"}, results)
    assert 0 < measured < planned and text.count("## ") == len(plan["table"])
