"""One source of settings: pyproject's run config, AppConfig, ExperimentConfig and configs/federated_*.toml agree.

``[tool.flwr.app.config]`` is what ``flwr run .`` starts from: exactly ``AppConfig``'s keys and
defaults. ``ExperimentConfig`` (``FederateConfig``, what ``fedcond federate`` starts from) is an
app config plus the experiment's own keys. A config file's app settings must be the same whether
Flower reads it (``flwr run . --run-config FILE``) or fedcond does (``fedcond federate --config FILE``).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from fedcond.errors import FedcondError
from fedcond.federated.config import (
    FLWR_RUN_DEFAULTS,
    FROM_DM,
    RUN_CONFIG_NONE,
    AppConfig,
    ExperimentConfig,
    FederateConfig,
    run_config_key,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((ROOT / "configs").glob("federated_*.toml"))


def app_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def run_settings(config_class: type = ExperimentConfig) -> list[dataclasses.Field]:
    """The dataclass fields that are run settings: a run-config scalar type, or one that may be
    None with the scalar that stands for None in a run config (RUN_CONFIG_NONE), or DM's own
    setting that a built config holds instead of None (FROM_DM)."""
    scalars = ("str", "int", "float", "bool")
    return [f for f in dataclasses.fields(config_class)
            if f.type in scalars or (f.type.removesuffix(" | None") in scalars
                                     and (f.name in RUN_CONFIG_NONE or f.name in FROM_DM))]


def test_every_field_is_a_run_setting():
    # A field that is not a str/int/float/bool (an untyped dict of extras, say) cannot
    # travel in Flower's run config, so `flwr run` could never set it.
    assert run_settings() == list(dataclasses.fields(ExperimentConfig))
    assert FederateConfig is ExperimentConfig and issubclass(ExperimentConfig, AppConfig)
    built = FederateConfig()
    assert all(getattr(built, name) is not None for name in FROM_DM)  # DM's settings, referenced


def test_pyproject_run_config_equals_the_app_config_defaults():
    table = app_config()
    defaults = dataclasses.replace(AppConfig(), **FLWR_RUN_DEFAULTS)  # flwr run: num-clients = the federation's
    expected = defaults.to_run_config()
    assert sorted(table) == sorted(run_config_key(f.name) for f in run_settings(AppConfig))
    assert sorted(table) == sorted(expected), "keys differ between pyproject.toml and AppConfig"
    for key, value in expected.items():
        assert table[key] == value and type(table[key]) is type(value), (key, table[key], value)
    assert AppConfig.from_run_config(table) == defaults
    # the experiment's own keys are not the app's: an experiment's run config holds the app's alone
    own = {run_config_key(f.name) for f in dataclasses.fields(ExperimentConfig)} - set(table)
    assert own >= {"strategies", "storage-dtypes", "dp-epsilons", "random-reference", "central-max-epochs"}
    assert set(FederateConfig().to_run_config()) == set(table)


def test_each_method_runs_its_own_iterations_unless_set():
    # None (run config: 0) is the method's own default: DM's 100 (today's federated runs),
    # DC's, FRePo's and DP-DM's own; a number set applies to every method.
    from fedcond.distill import get_distiller

    def own(method: str) -> int:
        return get_distiller(method).config_class.iterations

    assert FederateConfig().iterations is None and own("dm") == 100
    for method in ("dm", "dc", "frepo", "dp-dm"):
        assert FederateConfig(method=method).distill_config()[1].iterations == own(method)
        assert FederateConfig(method=method).client_iterations == own(method)
        assert FederateConfig(method=method, iterations=7).distill_config()[1].iterations == 7
    assert FederateConfig(dp_epsilon=2.0).client_iterations == own("dp-dm")
    assert FederateConfig(method="frepo", mode="iterative").feddm_config().iterations == own("dm")  # FedDM is DM
    assert FederateConfig(method="herding").client_iterations is None  # a coreset does not iterate
    assert FederateConfig().to_json()["iterations"] == 100  # results and checkpoints record what ran
    cfg = FederateConfig(iterations=30)
    assert cfg.to_run_config()["iterations"] == 30 and FederateConfig.from_run_config(cfg.to_run_config()) == cfg
    assert FederateConfig().to_run_config()["iterations"] == 0
    assert FederateConfig.from_run_config({"iterations": 0}).iterations is None
    with pytest.raises(FedcondError, match="--iterations must be >= 1, got 0"):
        FederateConfig(iterations=0)
    with pytest.raises(FedcondError, match="--iterations must be >= 1, got 0"):  # a flag beside a file too
        FederateConfig.from_toml(ROOT / "configs" / "federated_digits.toml", iterations=0)
    assert FederateConfig.from_toml(ROOT / "configs" / "federated_digits.toml", iterations=7).iterations == 7


def test_building_a_config_imports_only_its_method():
    code = ("import sys; from fedcond.federated.config import FederateConfig; FederateConfig(); "
            "print(*sorted(m for m in sys.modules if m.startswith('fedcond.distill.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = set(out.stdout.split())
    assert "fedcond.distill.dm" in loaded
    others = {"coreset", "dc", "dd", "dp_dm", "frepo", "kip", "mtt"}
    assert not loaded & {f"fedcond.distill.{m}" for m in others}, loaded


def test_requires_python_matches_flower():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # flwr 1.41 needs 3.11


def flower_settings(path: Path) -> dict:
    """The run config Flower builds for ``flwr run . --run-config PATH``: its parser, then its
    fusion with the app's defaults (which rejects keys the app does not declare)."""
    from flwr.common.config import fuse_dicts, get_fused_config_from_dir, parse_config_args

    overrides = parse_config_args([str(path)])
    fused = get_fused_config_from_dir(ROOT, overrides)
    assert fused == fuse_dicts(app_config(), overrides)
    return fused


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_files_read_the_same_by_flower_and_fedcond(path, tmp_path):
    via_fedcond = FederateConfig.from_toml(path)
    written = tomllib.loads(path.read_text())
    assert written and all(getattr(via_fedcond, k.replace("-", "_")) == v for k, v in written.items())
    app_keys = set(app_config())
    if set(written) <= app_keys:  # a file of app keys is a Flower run config as it is
        app_file = path
    else:  # Flower refuses the experiment's keys; the file's app keys are read alike
        with pytest.raises(ValueError, match="not present"):
            flower_settings(path)
        app_file = tmp_path / path.name
        app_file.write_text("".join(line + "\n" for line in path.read_text().splitlines()
                                    if line.split("=")[0].strip() in app_keys))
    assert AppConfig.from_run_config(flower_settings(app_file)) == via_fedcond.app


def test_the_digits_file_is_a_flower_run_config():
    # docs/federated.md runs `flwr run . --run-config configs/federated_digits.toml`
    assert set(tomllib.loads((ROOT / "configs" / "federated_digits.toml").read_text())) <= set(app_config())


def test_config_files_exist():
    assert {p.name for p in CONFIG_FILES} >= {"federated_digits.toml", "federated_mnist.toml"}


def test_cli_flags_override_a_file(tmp_path):
    cfg = FederateConfig.from_toml(ROOT / "configs" / "federated_digits.toml", rounds=2, alpha=None)
    assert cfg.rounds == 2 and cfg.alpha == 0.5 and cfg.strategy_names == ["fedcond", "fedavg", "fedprox"]


@pytest.mark.parametrize("text, problem", [
    ("[federate]\nrounds = 2\n", "top-level kebab-case keys"),
    ("num_clients = 4\n", "unknown key(s) num_clients; known: alpha"),
    ("nosuch = 1\n", "unknown key(s) nosuch"),
    ('rounds = "two"\n', "rounds must be of type int"),
    ('strategies = ["fedcond", "fedavg"]\n', "strategies must be of type str"),
    ('strategies = "fedcond,nope"\n', "unknown strategy nope"),
])
def test_bad_files_are_user_errors(tmp_path, text, problem):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(FedcondError) as err:
        FederateConfig.from_toml(path)
    assert problem in str(err.value)


def test_whole_floats_from_toml_are_floats(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("alpha = 1\n")
    cfg = FederateConfig.from_toml(path)
    assert cfg.alpha == 1.0 and isinstance(cfg.alpha, float)


def test_method_options_are_checked_against_the_method():
    cfg = FederateConfig().with_method_options({"lr_images": 0.5})
    assert cfg.distill_config()[1].lr_images == 0.5
    assert FederateConfig.from_run_config(cfg.to_run_config()) == cfg  # travels as a run-config string
    with pytest.raises(FedcondError, match="unknown option.*nosuch; known: .*lr_images"):
        FederateConfig().with_method_options({"nosuch": 3})
    with pytest.raises(FedcondError, match="unknown option.*ipc"):  # ipc is a setting of its own
        FederateConfig(method_options='{"ipc": 3}')
    with pytest.raises(FedcondError, match="JSON object"):
        FederateConfig(method_options="lr_images=0.5")


def test_one_recipe_reaches_every_learner_and_an_unequal_one_is_refused_unless_asked_for():
    from fedcond.augment import DEFAULT_STRATEGY, parse_strategy

    cfg = FederateConfig()
    assert cfg.server_recipe == cfg.recipe and set(cfg.learner_recipes().values()) == {cfg.recipe}
    assert cfg.recipe.augmenter(1).families == parse_strategy("crop_scale_rotate")  # no flips on digits
    assert cfg.recipe.augmenter(3).families == parse_strategy(DEFAULT_STRATEGY)
    off = FederateConfig(augment="none")
    assert off.recipe.augmenter(1) is None and off.server_recipe.augmenter(1) is None and off.recipe_notes == []
    # augmentation on one side and off the other: refused, unless asked for by name, then reported first
    with pytest.raises(FedcondError, match="different recipes"):
        FederateConfig(augment="none", server_augment="auto")
    unequal = FederateConfig(augment="none", server_augment="crop", unequal_recipe=True)
    assert unequal.server_recipe.augmenter(3).families == ("crop",) and unequal.recipe.augmenter(3) is None
    assert unequal.recipe_notes and unequal.recipe_notes[0].startswith("UNEQUAL RECIPES")
    with pytest.raises(FedcondError, match="DSA strategy"):
        FederateConfig(augment="crop_wobble")
