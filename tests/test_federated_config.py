"""One source of settings: pyproject's run config, FederateConfig and configs/federated_*.toml agree.

``[tool.flwr.app.config]`` is what ``flwr run .`` starts from; ``FederateConfig``'s defaults
are what ``fedcond federate`` starts from. They must be the same run. A config file must
give the same settings whether Flower reads it (``flwr run . --run-config FILE``) or fedcond
does (``fedcond federate --config FILE``).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedcond.errors import FedcondError
from fedcond.federated.config import FederateConfig, run_config_key

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((ROOT / "configs").glob("federated_*.toml"))


def app_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def run_settings() -> list[dataclasses.Field]:
    """The dataclass fields that are run settings (every field with a run-config scalar type)."""
    return [f for f in dataclasses.fields(FederateConfig) if f.type in ("str", "int", "float", "bool")]


def test_every_field_is_a_run_setting():
    # A field that is not a str/int/float/bool (an untyped dict of extras, say) cannot
    # travel in Flower's run config, so `flwr run` could never set it.
    assert run_settings() == list(dataclasses.fields(FederateConfig))


def test_pyproject_run_config_equals_the_dataclass_defaults():
    table = app_config()
    defaults = FederateConfig()
    expected = {run_config_key(f.name): getattr(defaults, f.name) for f in run_settings()}
    assert sorted(table) == sorted(expected), "keys differ between pyproject.toml and FederateConfig"
    for key, value in expected.items():
        assert table[key] == value and type(table[key]) is type(value), (key, table[key], value)
    assert FederateConfig.from_run_config(table) == defaults


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
def test_config_files_read_the_same_by_flower_and_fedcond(path):
    via_flower = FederateConfig.from_run_config(flower_settings(path))
    via_fedcond = FederateConfig.from_toml(path)
    assert via_flower == via_fedcond
    written = tomllib.loads(path.read_text())
    assert written and all(getattr(via_fedcond, k.replace("-", "_")) == v for k, v in written.items())


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


def test_server_augment_follows_the_images_and_rejects_unknown_families():
    from fedcond.augment import DEFAULT_STRATEGY, parse_strategy

    cfg = FederateConfig()
    assert cfg.server_augmenter(1).families == parse_strategy("crop_scale_rotate")  # no flips on digits
    assert cfg.server_augmenter(3).families == parse_strategy(DEFAULT_STRATEGY)
    assert FederateConfig(server_augment="none").server_augmenter(1) is None
    assert FederateConfig(server_augment="crop").server_augmenter(3).families == ("crop",)
    with pytest.raises(FedcondError, match="DSA strategy"):
        FederateConfig(server_augment="crop_wobble")
