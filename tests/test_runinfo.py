"""fedcond.runinfo: the provenance every results file records."""

from __future__ import annotations

from fedcond.runinfo import shell_command


def test_a_recorded_command_pastes_into_a_shell_without_the_options_that_change_no_result():
    argv = ["b.py", "compare", "--note", "made twice", "--mem-batch", "", "--note=x", "--seeds", "3"]
    assert shell_command(argv, drop=("--note",)) == "python b.py compare --mem-batch '' --seeds 3"
    assert shell_command(["b.py", "--note", "a b"]) == "python b.py --note 'a b'"
