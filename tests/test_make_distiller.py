"""One way from (method, options, fixed) to a distiller: make_distiller, used the same way by
the CLI, the federated client, the continual buffer and the benchmarks, which all reject
unknown options naming them and listing the known ones; and the Callback base class's hooks."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from fedcond.cli import app
from fedcond.continual.buffer import DistillSpec
from fedcond.distill import Callback, make_distiller
from fedcond.errors import FedcondError
from fedcond.federated.config import FederateConfig


def test_builds_the_config_from_its_options_and_fixed_values():
    distiller, config = make_distiller("dm", {"lr_images": 0.5}, fixed={"ipc": 3, "model": "convnet", "iterations": 7})
    assert distiller.name == "dm" and (config.ipc, config.iterations, config.lr_images) == (3, 7, 0.5)
    assert make_distiller("dm", {"ipc": 3, "iterations": 7, "lr_images": 0.5})[1] == config  # no user: all options
    # Fixed values apply where the method has the field (herding does not iterate); None keeps its default.
    assert "iterations" not in make_distiller("herding", fixed={"ipc": 2, "iterations": 7})[1].to_dict()
    dd, config = make_distiller("dd", fixed={"iterations": None})
    assert config.iterations == dd.config_class().iterations


@pytest.mark.parametrize("options", [{"nosuch": 1}, {"ipc": 3}, {"iterations": 3}])
def test_unknown_or_fixed_fields_as_options_are_rejected(options):
    name = next(iter(options))
    with pytest.raises(FedcondError, match=f"unknown option.*{name}; known: .*lr_images"):
        make_distiller("dm", options, fixed={"ipc": 1, "iterations": None})


def test_fixed_values_are_not_options_and_apply_where_the_method_has_them():
    with pytest.raises(FedcondError, match="unknown option.*epsilon"):
        make_distiller("dp-dm", {"epsilon": 1.0}, fixed={"epsilon": None})
    _, config = make_distiller("dp-dm", fixed={"ipc": 1, "epsilon": 2.0, "experts_dir": "x"})
    assert config.epsilon == 2.0  # set where the method has the field (dp-dm has no experts)


def test_every_caller_rejects_unknown_options(tmp_path):
    result = CliRunner().invoke(app, ["distill", "--dataset", "digits", "--method", "random", "--out",
                                      str(tmp_path), "-o", "nosuch=1"])
    assert result.exit_code == 2 and "unknown option(s) for method random: nosuch; known: " in result.stderr
    with pytest.raises(FedcondError, match="unknown option.*nosuch; known: .*lr_images"):
        FederateConfig(method="dm", method_options='{"nosuch": 1}')
    result = CliRunner().invoke(app, ["continual", "--out", str(tmp_path / "c"), "-o", "nosuch=1"])
    assert result.exit_code == 2 and "unknown option(s) for method dm: nosuch; known: " in result.stderr
    # The continual buffer used to drop unknown options silently.
    with pytest.raises(FedcondError, match="unknown option.*nosuch; known: .*lr_images"):
        DistillSpec(method="dm", options={"nosuch": 1})
    with pytest.raises(FedcondError, match="unknown option.*lr_images; known: .*feature_epochs"):
        DistillSpec(method="herding", options={"lr_images": 1.0})


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_progress(self, iteration: int, total: int, metrics: dict[str, float]) -> None:
        self.events.append(("progress", iteration))

    def on_snapshot(self, iteration: int, synthetic_set) -> None:
        self.events.append(("snapshot", iteration))


def test_callbacks_get_declared_hooks_and_plain_functions_progress(digits):
    distiller, config = make_distiller("dm", {"ipc": 1, "iterations": 2, "eval_every": 1, "log_every": 1})
    rec, seen = Recorder(), []
    distiller.distill(digits, config, torch.Generator().manual_seed(0),
                      callbacks=[rec, Callback(), lambda i, n, m: seen.append(i)])
    assert rec.events == [("progress", 1), ("snapshot", 1), ("progress", 2), ("snapshot", 2)]
    assert seen == [1, 2]


def test_hook_objects_that_are_not_callbacks_are_refused_not_silently_ignored():
    from fedcond.distill.base import Callback, as_callbacks

    class Snapshots:  # has a hook, but does not subclass Callback
        def on_snapshot(self, iteration, synthetic_set):
            pass

    with pytest.raises(TypeError, match="on_snapshot"):
        as_callbacks([Snapshots()])
    with pytest.raises(TypeError, match="nor a function"):
        as_callbacks([42])
    calls = []
    wrapped = as_callbacks([lambda i, n, m: calls.append(i), Callback()])
    wrapped[0].on_progress(3, 10, {})
    assert calls == [3] and isinstance(wrapped[1], Callback)
