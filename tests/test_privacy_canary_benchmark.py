"""The canary audit benchmark writes a bound per cell and resumes: a rerun skips finished cells."""

import json
import sys

from benchmark_scripts import load_script  # tests/, a test-only helper


def test_cells_are_written_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    script = load_script("privacy_canary_benchmark")
    try:
        argv = ["privacy_canary_benchmark.py", "--dataset", "digits", "--canaries", "200", "--ipc", "3",
                "--kinds", "random-real,dp-dm-eps10", "--dp-iterations", "1", "--dp-option", "bank_size=1",
                "--dp-option", "min_class_size=0", "--out", str(tmp_path)]
        monkeypatch.setattr(sys, "argv", argv)
        script.main()
        saved = json.loads((tmp_path / "privacy_canary_digits.json").read_text())
        assert set(saved["cells"]) == {"random-real/seed0", "dp-dm-eps10/seed0"}
        real, dp = saved["cells"]["random-real/seed0"], saved["cells"]["dp-dm-eps10/seed0"]
        assert real["empirical_epsilon_lower_bound"] > 1 and real["stated_epsilon"] is None
        assert dp["empirical_epsilon_lower_bound"] <= dp["stated_epsilon"] <= 10
        assert dp["attack"] == "whitebox" and set(dp["attacks"]) == {"blackbox", "whitebox", "whitebox-inner"}
        assert real["attack_ceiling"] <= real["largest_provable_bound"]
        assert saved["settings"]["normalization"] == {"mean": [0.5], "std": [0.5]}
        capsys.readouterr()
        script.main()
        assert capsys.readouterr().out.count("done before") == 2
        assert "| random-real | 0 | - |" in (tmp_path / "privacy_canary_digits.md").read_text()
    finally:
        sys.modules.pop("privacy_canary_benchmark", None)
