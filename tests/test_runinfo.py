"""fedcond.runinfo: the provenance every results file records."""

from __future__ import annotations

from fedcond.runinfo import shell_command


def test_a_recorded_command_pastes_into_a_shell_without_the_options_that_change_no_result():
    argv = ["b.py", "compare", "--note", "made twice", "--mem-batch", "", "--note=x", "--seeds", "3"]
    assert shell_command(argv, drop=("--note",)) == "python b.py compare --mem-batch '' --seeds 3"
    assert shell_command(["b.py", "--note", "a b"]) == "python b.py --note 'a b'"


def test_a_cli_run_records_the_fedcond_command_however_it_was_started(monkeypatch):
    import sys

    import torch

    from fedcond.runinfo import run_record

    for argv0 in ("/venv/bin/fedcond", "/src/fedcond/cli.py"):  # entry point, or `python -m fedcond.cli`
        monkeypatch.setattr(sys, "argv", [argv0, "evaluate", "a b.safetensors", "--runs", "3"])
        assert run_record(torch.device("cpu"))["command"] == "fedcond evaluate 'a b.safetensors' --runs 3"
    monkeypatch.setattr(sys, "argv", ["benchmarks/x.py", "--n", "1"])
    assert run_record(torch.device("cpu"))["command"] == "benchmarks/x.py --n 1"


def test_a_cpu_is_described_with_amx_where_it_has_it(monkeypatch):
    """Results files name the machine; AMX decides what precision auto picks and the wall times."""
    import torch

    from fedcond import precision
    from fedcond.runinfo import device_description

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    assert device_description(torch.device("cpu")).endswith("threads, AMX)")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert device_description(torch.device("cpu")).endswith(" threads)")
