"""The ``precision`` setting: one name, three values, auto resolved by the hardware, what ran recorded."""

from __future__ import annotations

import pytest
import torch

from fedcond import precision as P
from fedcond.errors import FedcondError


@pytest.fixture()
def cpu_with(monkeypatch):
    """Fake the CPU's flags: ``cpu_with({"amx_bf16"})``."""

    def fake(flags: set[str]) -> None:
        monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))

    return fake


def test_auto_is_bfloat16_only_on_a_cpu_with_amx(cpu_with):
    cpu_with({"avx512f", "avx512_bf16"})  # this project's CPU: bfloat16 instructions, no AMX tiles
    assert P.resolve_precision("auto", "cpu") == "float32"
    cpu_with({"avx512_bf16", "amx_bf16", "amx_tile"})
    assert P.resolve_precision("auto", "cpu") == "bfloat16"
    assert P.resolve_precision("float32", "cpu") == "float32"  # an explicit value is never overridden
    cpu_with(set())
    assert P.resolve_precision("bfloat16", torch.device("cpu")) == "bfloat16"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    monkeypatch.setattr(P, "CPUINFO", info)
    P.cpu_flags.cache_clear()
    try:
        assert {"amx_bf16", "avx512_bf16"} <= P.cpu_flags() and P.has_fast_bfloat16("cpu")
        monkeypatch.setattr(P, "CPUINFO", tmp_path / "missing")
        P.cpu_flags.cache_clear()
        assert P.cpu_flags() == frozenset() and not P.has_fast_bfloat16("cpu")
    finally:
        P.cpu_flags.cache_clear()


@pytest.mark.parametrize("bad", ["float16", "bf16", "", "AUTO"])
def test_unknown_precisions_are_user_errors(bad):
    with pytest.raises(FedcondError, match="precision must be one of auto, float32, bfloat16"):
        P.check_precision(bad)
    with pytest.raises(ValueError):
        P.autocast("auto", "cpu")  # a loop needs a resolved value


def test_autocast_rounds_only_in_bfloat16():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8)
    with P.autocast("float32", "cpu"):
        assert layer(x).dtype == torch.float32
    with P.autocast("bfloat16", "cpu"):
        assert layer(x).dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32


def test_bfloat16_training_runs_in_bfloat16_and_learns(digits, monkeypatch):
    """train_model in bfloat16: the forward runs under autocast (seen inside the model), the
    weights stay float32 and contiguous afterwards, and it learns what float32 learns."""
    from fedcond.models import get_model
    from fedcond.train import accuracy, train_model

    seen: list[torch.dtype] = []
    accs = {}
    for precision in ("float32", "bfloat16"):
        model = get_model("convnet", 1, 10, (8, 8), seed=0)
        hook = model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        train_model(model, digits.train_images[:300], digits.train_labels[:300], 15,
                    generator=torch.Generator().manual_seed(0), precision=precision)
        hook.remove()
        assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
        accs[precision] = accuracy(model, digits.test_images, digits.test_labels)
        assert seen[-1] == (torch.bfloat16 if precision == "bfloat16" else torch.float32)
    assert accs["bfloat16"] > 0.8 and abs(accs["bfloat16"] - accs["float32"]) < 0.05, accs


def test_evaluation_records_the_precision_that_ran(tiny_set, digits, cpu_with):
    from fedcond.evaluate import EvalConfig, evaluate_synthetic

    cpu_with(set())
    auto = evaluate_synthetic(tiny_set, digits, EvalConfig(epochs=2), runs=1).to_json()
    assert auto["precision"] == "float32" and auto["eval_config"]["precision"] == "float32"
    cpu_with({"amx_bf16"})
    amx = evaluate_synthetic(tiny_set, digits, EvalConfig(epochs=2), runs=1).to_json()
    assert amx["precision"] == "bfloat16"
    with pytest.raises(FedcondError, match="precision"):
        EvalConfig(precision="half")


def test_dm_resolves_auto_and_keeps_real_precision_working(digits, cpu_with):
    """DM records what ran; ``real_precision`` (the published name) still sets it."""
    from fedcond.distill import make_distiller
    from fedcond.distill.dm import DMConfig

    def precision_of(options: dict) -> str:
        dm, config = make_distiller("dm", {"ipc": 1, "iterations": 2, **options})
        return dm.distill(digits, config, torch.Generator().manual_seed(0)).config["precision"]

    cpu_with(set())
    assert precision_of({}) == "float32"
    assert precision_of({"real_precision": "bfloat16"}) == "bfloat16"
    cpu_with({"amx_bf16"})
    assert precision_of({}) == "bfloat16"
    assert precision_of({"precision": "float32"}) == "float32"
    with pytest.raises(FedcondError, match="disagree"):
        DMConfig(precision="float32", real_precision="bfloat16")
    with pytest.raises(FedcondError, match="precision"):
        DMConfig(precision="float16")


def test_one_name_across_cli_configs_and_flower(tmp_path):
    """``precision`` is a FederateConfig field (so a Flower run-config key and a TOML key),
    validated like every other; the continual config takes the same values."""
    from fedcond.continual.runner import ContinualConfig
    from fedcond.federated.config import FederateConfig

    assert FederateConfig().precision == "auto"
    assert FederateConfig.from_run_config({"precision": "bfloat16"}).precision == "bfloat16"
    (tmp_path / "c.toml").write_text('precision = "float32"\n')
    assert FederateConfig.from_toml(tmp_path / "c.toml").precision == "float32"
    for bad in (lambda: FederateConfig(precision="fp16"), lambda: ContinualConfig(precision="fp16")):
        with pytest.raises(FedcondError, match="precision must be one of auto, float32, bfloat16"):
            bad()
    # DM's own option would be a second name for the same thing: refused there
    with pytest.raises(FedcondError, match="precision"):
        FederateConfig(method_options='{"precision": "bfloat16"}')


def test_fedavg_local_training_in_bfloat16(digits):
    from fedcond.federated.client_training import local_train
    from fedcond.models import get_model

    model = get_model("convnet", 1, 10, (8, 8), seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    loss = local_train(model, digits.train_images[:128], digits.train_labels[:128], 1, 0.05, 32,
                       torch.Generator().manual_seed(0), proximal_mu=0.01, precision="bfloat16")
    assert loss == loss and loss > 0
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_cli_takes_precision_and_records_what_ran(tmp_path, tiny_set, cpu_with):
    import json

    from typer.testing import CliRunner

    from fedcond.cli import app

    runner = CliRunner()
    cpu_with(set())
    out = tmp_path / "dm"
    ok = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "-n", "2",
                             "--threads", "1", "--precision", "bfloat16", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert json.loads((out / "run.json").read_text())["precision"] == "bfloat16"
    auto = runner.invoke(app, ["distill", "--dataset", "digits", "--method", "dm", "--ipc", "1", "-n", "2",
                               "--threads", "1", "--out", str(tmp_path / "auto")])
    assert auto.exit_code == 0 and json.loads((tmp_path / "auto" / "run.json").read_text())["precision"] == "float32"
    tiny_set.save(tmp_path / "s.safetensors")
    ev = runner.invoke(app, ["evaluate", str(tmp_path / "s.safetensors"), "--dataset", "digits", "--runs", "1",
                             "--epochs", "2", "--precision", "bfloat16", "--json", str(tmp_path / "e.json")])
    assert ev.exit_code == 0, ev.output
    assert json.loads((tmp_path / "e.json").read_text())["precision"] == "bfloat16"
    for args, message in (
        (["distill", "--dataset", "digits", "--precision", "fp16", "--out", str(tmp_path / "x")],
         "--precision must be one of auto, float32, bfloat16"),
        (["distill", "--dataset", "digits", "--method", "herding", "--precision", "bfloat16", "--out",
          str(tmp_path / "x")], "has no precision setting"),
        (["evaluate", str(tmp_path / "s.safetensors"), "--dataset", "digits", "--precision", "half"],
         "precision must be one of"),
        (["federate", "--dataset", "digits", "--precision", "half", "--out", str(tmp_path / "f")],
         "--precision must be one of"),
    ):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, bad.output


def test_float32_dm_on_colour_images_runs_channels_last_with_the_same_sets(monkeypatch):
    """Colour images: DM's float32 networks are channels-last on a CPU (measured faster), a
    layout choice only: the set equals the contiguous networks' set up to float rounding."""
    import fedcond.distill.dm as dm_module
    from fedcond.data import ImageDataset
    from fedcond.distill import make_distiller

    cpu = torch.device("cpu")
    assert dm_module.channels_last_networks(cpu, torch.float32, 3)
    assert not dm_module.channels_last_networks(cpu, torch.float32, 1)  # MNIST: measured slower
    assert dm_module.channels_last_networks(cpu, torch.bfloat16, 1)
    x = torch.randn(60, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.arange(60) % 3
    data = ImageDataset(name="colour", train_images=x, train_labels=y, test_images=x[:3], test_labels=y[:3],
                        classes=("a", "b", "c"), mean=(0.0,) * 3, std=(1.0,) * 3)

    def distill():
        dm, config = make_distiller("dm", {"ipc": 2, "iterations": 5, "precision": "float32"})
        return dm.distill(data, config, torch.Generator().manual_seed(0)).images

    layouts = []
    real_to = torch.nn.Module.to

    def spy(module, *args, **kwargs):
        layouts.append(kwargs.get("memory_format"))
        return real_to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    channels_last = distill()
    assert torch.channels_last in layouts
    monkeypatch.setattr(dm_module, "channels_last_networks", lambda *a: False)
    layouts.clear()
    contiguous = distill()
    assert torch.channels_last not in layouts
    torch.testing.assert_close(channels_last, contiguous, rtol=1e-4, atol=1e-4)
