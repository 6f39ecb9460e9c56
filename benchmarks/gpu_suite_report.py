"""``results.md`` of ``benchmarks/gpu_suite.py``: its results.json as tables."""

from __future__ import annotations

from typing import Any


def _pct(row: dict[str, Any] | None) -> str:
    if not row:
        return "—"
    return f"{100 * row['accuracy_mean']:.2f} ± {100 * row['accuracy_std']:.2f}"


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}"


def markdown(results: dict[str, Any]) -> str:
    """Timing, paper-length and command tables, skipped cells, and the run's provenance."""
    cells: dict[str, dict[str, Any]] = results.get("cells", {})
    dry = " (DRY RUN: CPU, digits, toy sizes — not a measurement)" if results.get("dry_run") else ""
    lines = [f"# GPU suite{dry}", "", f"Command: `{results.get('command', '')}`", "",
             f"Device: {results.get('device', '')}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items() if v is not None), "",
             "## Speed: fedcond beside the authors' loop structure, same run", "",
             "| cell | fedcond ms/iter | reference ms/iter | speed-up | fedcond peak MiB | reference peak MiB "
             "| goal (issue) |", "|---|---|---|---|---|---|---|"]
    for name, row in cells.items():
        if not name.startswith("time-"):
            continue
        if row.get("status") != "done":
            lines.append(f"| {name} | {row.get('status')}: {row.get('error', '')} | | | | | |")
            continue
        ours, ref = row["fedcond"], row["reference_loop"]
        target = row.get("target")
        goal = "—"
        if target:
            verdict = "met" if target["meets_goal"] else "not met"
            goal = (
                f"<= {_ms(target['goal_seconds'])} ms (authors' H100: {_ms(target['reference_seconds'])} ms): {verdict}"
            )
        lines.append(f"| {name} | {_ms(ours['seconds_per_iteration'])} | {_ms(ref['seconds_per_iteration'])} "
                     f"| {row['speedup']:.2f}x | {ours['peak_memory_mb']:.0f} | {ref['peak_memory_mb']:.0f} | {goal} |")
    lines += ["", "DSA and MTT rows: per outer iteration. Peak memory: the GPU allocator's peak per loop "
              "with the resident data set in both; on the CPU: the process's peak RSS, monotone over the run).", "",
              "## Paper-length DM, standard evaluation protocol", "",
              "| cell | iterations | distill s | accuracy % | random real % | protocol | status |",
              "|---|---|---|---|---|---|---|"]
    for name, row in cells.items():
        if name.startswith("paper-"):
            lines.append(
                f"| {name} | {row.get('iterations_done', 0)} / {row.get('settings', {}).get('iterations', '')} "
                f"| {row.get('distill_seconds', 0):.0f} | {_pct(row.get('accuracy'))} "
                f"| {_pct(row.get('random_real'))} | {row.get('protocol', '')} "
                f"| {row.get('status')} {row.get('note', row.get('error', ''))} |"
            )
    commands = {n: r for n, r in cells.items() if n.startswith("cmd-")}
    if commands:
        lines += [
            "",
            "## Other benchmarks' GPU commands",
            "",
            "| cell | status | seconds | command |",
            "|---|---|---|---|",
        ]
        for name, row in commands.items():
            lines.append(f"| {name} | {row.get('status')} {row.get('note', '')} | {row.get('seconds', 0):.0f} "
                         f"| `{row.get('command', '')}` |")
    skipped = results.get("skipped", {})
    if skipped:
        lines += ["", "## Skipped in the last call", "", *[f"- {n}: {why}" for n, why in skipped.items()]]
    calls = results.get("calls", [])
    lines += ["", f"Calls: {len(calls)}; this one took {results.get('elapsed_seconds_this_call', 0):.0f} s."]
    return "\n".join(lines) + "\n"
