"""The distilled plugins (one per mode, sharing a DistilledBuffer storage policy) inside
Avalanche's Naive on a tiny benchmark built here."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

warnings.filterwarnings("ignore", category=DeprecationWarning)

from avalanche.benchmarks import nc_benchmark
from avalanche.benchmarks.utils import as_classification_dataset
from avalanche.benchmarks.utils.data_loader import ReplayDataLoader
from avalanche.core import SupervisedPlugin
from avalanche.training.supervised import Naive

from fedcond.continual.buffer import DistilledBuffer, DistillSpec
from fedcond.continual.buffer_training import BufferTraining, train_on_memory
from fedcond.continual.plugin import (
    DistilledFinetunePlugin,
    DistilledMixPlugin,
    DistilledReplayPlugin,
    distilled_plugin,
)
from fedcond.models import get_model
from fedcond.train import soft_cross_entropy


class _Tensors(TensorDataset):
    def __init__(self, x, y):
        super().__init__(x, y)
        self.targets = y.tolist()


@pytest.fixture(scope="module")
def tiny(digits):
    """Classes 0-3 of digits, 40 train images each, as a 2-experience Avalanche benchmark."""
    tr = torch.cat([torch.nonzero(digits.train_labels == c).flatten()[:40] for c in range(4)])
    te = torch.nonzero(digits.test_labels < 4).flatten()
    return nc_benchmark(
        as_classification_dataset(_Tensors(digits.train_images[tr], digits.train_labels[tr])),
        as_classification_dataset(_Tensors(digits.test_images[te], digits.test_labels[te])),
        n_experiences=2, task_labels=False, shuffle=False, fixed_class_order=[0, 1, 2, 3],
    )


class _BatchSizes(SupervisedPlugin):
    """Records every training mini-batch size and epoch loader (shows replay items are mixed in)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []
        self.loaders: list[type] = []

    def before_training_epoch(self, strategy, **kwargs):
        self.loaders.append(type(strategy.dataloader))

    def before_forward(self, strategy, **kwargs):
        self.sizes.append(len(strategy.mb_y))


def _exp0_accuracy(model, bench):
    x = torch.stack([bench.test_stream[0].dataset[i][0] for i in range(len(bench.test_stream[0].dataset))])
    y = torch.tensor(bench.test_stream[0].dataset.targets)
    with torch.no_grad():
        return (model.eval()(x).argmax(1) == y).float().mean().item()


def _train(bench, plugins):
    torch.manual_seed(0)
    model = get_model("convnet-bn", 1, 10, (8, 8), seed=0)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                     train_mb_size=16, train_epochs=4, plugins=plugins, evaluator=None)
    for exp in bench.train_stream:
        strategy.train(exp)
    return strategy


def test_plugin_replays_distilled_buffer_with_naive(tiny):
    spec = DistillSpec(method="herding", options={"feature_epochs": 1})
    plugin, sizes = DistilledMixPlugin(mem_size=8, batch_size_mem=8, spec=spec), _BatchSizes()
    strategy = _train(tiny, [plugin, sizes])
    buf = plugin.storage_policy
    assert len(buf.buffer) == 8 and buf.class_counts() == {(0, c): 2 for c in range(4)}
    assert sizes.loaders[-1] is ReplayDataLoader  # Avalanche's own replay loader, second experience
    assert max(sizes.sizes) == 16 + 8  # second experience: 16 new + 8 replayed per batch
    naive = _train(tiny, [])
    # Replay keeps the first experience alive; fine-tuning forgets it.
    assert _exp0_accuracy(strategy.model, tiny) > _exp0_accuracy(naive.model, tiny) + 0.3


def test_soft_label_buffer_adds_soft_target_loss(tiny):
    spec = DistillSpec(iterations=2, options={"learn_labels": True, "dsa": False}, seed=7)
    plugin = DistilledMixPlugin(mem_size=4, batch_size_mem=3, soft_weight=0.5,
                                storage_policy=DistilledBuffer(4, spec, num_classes=10))
    model = get_model("convnet-bn", 1, 10, (8, 8), seed=0)
    plugin.storage_policy.post_adapt(SimpleNamespace(device="cpu"), tiny.train_stream[0])
    buf = plugin.storage_policy
    assert buf.soft_targets is not None
    fake = SimpleNamespace(model=model.eval(), device=torch.device("cpu"), loss=torch.tensor(1.0), train_mb_size=16)
    plugin.before_training_exp(fake)  # soft buffers leave the data loader alone
    assert not hasattr(fake, "dataloader")
    plugin.before_backward(fake)
    idx = torch.randint(0, 4, (3,), generator=torch.Generator().manual_seed(7))
    expected = 1.0 + 0.5 * soft_cross_entropy(model(buf.images[idx]), buf.soft_targets[idx])
    assert torch.allclose(fake.loss, expected)
    fake.loss.backward()  # the replay term is differentiable w.r.t. the model
    assert model.classifier.weight.grad is not None


def test_default_retrain_mode_learns_from_the_buffer_alone(tiny):
    """``retrain``: after each experience the model restarts from its initial weights and
    trains on the balanced distilled buffer, so the first experience is kept."""
    spec = DistillSpec(iterations=20, options={"dsa": False}, model="convnet-bn")
    plugin = DistilledReplayPlugin(mem_size=4, storage_policy=DistilledBuffer(4, spec, num_classes=10))
    assert plugin.mode == "retrain"
    sizes = _BatchSizes()
    strategy = _train(tiny, [plugin, sizes])
    assert max(sizes.sizes) <= 4 + 4  # buffer batches (4 images, plus 4 replayed), never 16 experience images
    assert plugin.storage_policy.class_counts() == {(0, c): 1 for c in range(4)}
    naive = _train(tiny, [])
    assert _exp0_accuracy(strategy.model, tiny) > _exp0_accuracy(naive.model, tiny) + 0.4


def test_batch_norm_learner_learns_from_distilled_replay(tiny):
    """Mixed-batch replay of DM images into a batch-norm ConvNet keeps the old classes
    (before the fix DM images drifted to 4-5x the real pixel scale and replay was useless)."""
    spec = DistillSpec(iterations=30, options={"dsa": False}, model="convnet-bn")
    plugin = DistilledMixPlugin(mem_size=8, batch_size_mem=8, storage_policy=DistilledBuffer(8, spec, num_classes=10))
    strategy = _train(tiny, [plugin])
    naive = _train(tiny, [])
    assert _exp0_accuracy(strategy.model, tiny) > _exp0_accuracy(naive.model, tiny) + 0.3


def test_plugin_in_a_users_avalanche_script_with_avalanches_own_model(tiny):
    """Avalanche's SimpleMLP and Naive, the plugin added with its arguments only."""
    from avalanche.models import SimpleMLP

    torch.manual_seed(0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=128)
    plugin = DistilledReplayPlugin(mem_size=8, spec=DistillSpec(iterations=20, options={"dsa": False}))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     train_mb_size=16, train_epochs=3, plugins=[plugin], evaluator=None)
    for exp in tiny.train_stream:
        strategy.train(exp)
    torch.manual_seed(0)
    plain = SimpleMLP(num_classes=10, input_size=64, hidden_size=128)
    naive = Naive(model=plain, optimizer=torch.optim.SGD(plain.parameters(), lr=0.05, momentum=0.9),
                  train_mb_size=16, train_epochs=3, evaluator=None)
    for exp in tiny.train_stream:
        naive.train(exp)
    assert len(plugin.storage_policy.buffer) == 8
    assert _exp0_accuracy(strategy.model, tiny) > _exp0_accuracy(naive.model, tiny) + 0.4


def test_bad_mode_is_a_user_error():
    from fedcond.errors import FedcondError

    with pytest.raises(FedcondError, match="mode must be one of"):
        distilled_plugin("gdumb", mem_size=4)


def test_plugin_in_bfloat16_distills_and_trains_in_bfloat16_and_records_it(tiny, monkeypatch):
    """``precision="bfloat16"``: DM's set records bfloat16, the buffer training runs under
    autocast (seen inside the model), ``settings()`` says so; the first experience is kept."""
    from avalanche.models import SimpleMLP

    from fedcond.continual import buffer_training

    seen = []
    real_train = buffer_training.train_model

    def spy(model, *args, **kwargs):
        seen.append(kwargs["precision"])
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(buffer_training, "train_model", spy)
    torch.manual_seed(0)
    model = SimpleMLP(num_classes=10, input_size=64, hidden_size=128)
    outputs = []
    model.features.register_forward_hook(lambda m, i, o: outputs.append(o.dtype))
    spec = DistillSpec(iterations=10, precision="bfloat16", options={"dsa": False})
    plugin = DistilledReplayPlugin(mem_size=8, spec=spec, buffer_training=buffer_training.BufferTraining(epochs=30))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                     train_mb_size=16, train_epochs=1, plugins=[plugin], evaluator=None)
    for exp in tiny.train_stream:
        strategy.train(exp)
    assert seen == ["bfloat16", "bfloat16"] and torch.bfloat16 in outputs
    assert plugin.settings()["precision"] == "bfloat16"
    assert plugin.storage_policy.synthetic_set().images.dtype == torch.float32
    assert _exp0_accuracy(strategy.model, tiny) > 0.6


def test_plugin_precision_auto_follows_the_hardware(monkeypatch):
    from fedcond import precision as P
    from fedcond.errors import FedcondError

    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert DistilledReplayPlugin(mem_size=4).settings()["precision"] == "float32"
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16"}))
    assert DistilledReplayPlugin(mem_size=4).settings()["precision"] == "bfloat16"
    with pytest.raises(FedcondError, match="precision must be one of"):
        DistilledReplayPlugin(mem_size=4, spec=DistillSpec(precision="fp16"))


# ---------------------------------------------------------------- one storage policy, one plugin per mode
def _run_one(bench, plugin, experiences=1):
    torch.manual_seed(0)
    model = get_model("convnet-bn", 1, 10, (8, 8), seed=0)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                     train_mb_size=16, train_epochs=2, plugins=[plugin], evaluator=None)
    for exp in list(bench.train_stream)[:experiences]:
        strategy.train(exp)
    return strategy.model


def _policy(method="random", **options):
    spec = DistillSpec(method=method, iterations=3 if method == "dm" else None, precision="float32",
                       options=({"dsa": False} if method == "dm" else {}) | options, seed=5)
    return DistilledBuffer(8, spec, num_classes=10)


RECIPE = BufferTraining(epochs=3, augment="crop_scale_rotate")


def test_each_mode_is_its_own_plugin_adding_hooks_to_the_one_before():
    plugins = {m: distilled_plugin(m, mem_size=8, storage_policy=_policy(), buffer_training=RECIPE)
               for m in ("replay", "finetune", "retrain")}
    assert [type(p) for p in plugins.values()] == [DistilledMixPlugin, DistilledFinetunePlugin, DistilledReplayPlugin]
    assert {m: p.mode for m, p in plugins.items()} == {m: m for m in plugins}
    assert isinstance(plugins["retrain"], DistilledFinetunePlugin)
    assert isinstance(plugins["finetune"], DistilledMixPlugin)
    # the mix plugin trains on no memory, so it reports no recipe for it; the others report theirs
    assert "buffer_training" not in plugins["replay"].settings()
    assert plugins["finetune"].settings()["buffer_training"]["epochs"] == plugins["retrain"].buffer_training.epochs == 3
    assert DistilledReplayPlugin(mem_size=8, seed=4).storage_policy.spec == DistillSpec(seed=4)  # the README's default
    with pytest.raises(Exception, match="not both"):
        DistilledMixPlugin(mem_size=8, storage_policy=_policy(), spec=DistillSpec())


def test_every_mode_fills_the_same_buffer_from_one_spec(tiny):
    """The storage policy decides what is kept, the plugin only when it is used: DM distills
    into the same tensors whether the plugin replays, fine-tunes or retrains (before or after
    the experience trains)."""
    held = []
    for mode in ("replay", "finetune", "retrain"):
        plugin = distilled_plugin(mode, mem_size=8, storage_policy=_policy("dm"), buffer_training=RECIPE)
        _run_one(tiny, plugin, experiences=2)
        held.append(plugin.storage_policy)
    assert all(torch.equal(b.images, held[0].images) and torch.equal(b.targets, held[0].targets) for b in held[1:])
    assert held[0].class_counts() == {(0, c): 2 for c in range(4)}


def test_finetune_is_mix_then_training_on_the_memory(tiny):
    """DistilledFinetunePlugin = DistilledMixPlugin + the memory training after the experience
    (from the weights the experience left, its own generator seeded seed + 1): bit for bit."""
    mix = DistilledMixPlugin(mem_size=8, storage_policy=_policy())
    finetune = DistilledFinetunePlugin(mem_size=8, storage_policy=_policy(), buffer_training=RECIPE)
    mixed, tuned = _run_one(tiny, mix), _run_one(tiny, finetune)
    assert not all(torch.equal(a, b) for a, b in zip(mixed.state_dict().values(), tuned.state_dict().values()))
    policy = mix.storage_policy
    train_on_memory(mixed, policy.images, policy.targets, RECIPE, torch.Generator().manual_seed(5 + 1))
    assert all(torch.equal(a, b) for a, b in zip(mixed.state_dict().values(), tuned.state_dict().values()))


def test_retrain_restarts_from_the_initial_weights_then_trains_on_the_memory(tiny):
    """DistilledReplayPlugin discards what the experience's training did: its model is the
    initial one trained on the memory alone, bit for bit."""
    retrain = DistilledReplayPlugin(mem_size=8, storage_policy=_policy(), buffer_training=RECIPE)
    model = _run_one(tiny, retrain)
    fresh = get_model("convnet-bn", 1, 10, (8, 8), seed=0)
    policy = retrain.storage_policy
    train_on_memory(fresh, policy.images, policy.targets, RECIPE, torch.Generator().manual_seed(5 + 1))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("factor", [1, 2])
@pytest.mark.parametrize("cls", [DistilledMixPlugin, DistilledFinetunePlugin, DistilledReplayPlugin])
def test_the_policy_stays_within_its_memory_budget_in_bytes(tiny, cls, factor):
    """Whatever plugin uses it, the policy never holds more than ``mem_size`` stored images'
    bytes (a mosaic counts once, though replay trains on its four tiles)."""
    from dataclasses import replace

    plugin = cls(mem_size=8, storage_policy=_policy(factor=factor))
    torch.manual_seed(0)
    model = get_model("convnet-bn", 1, 10, (8, 8), seed=0)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), train_mb_size=16,
                     train_epochs=1, plugins=[plugin], evaluator=None)
    for exp in tiny.train_stream:
        if cls is not DistilledMixPlugin:
            plugin.buffer_training = BufferTraining(epochs=1, augment="")
        strategy.train(exp)
        policy = plugin.storage_policy
        stored = policy.synthetic_set()
        assert stored.images.shape[0] == sum(policy.class_counts().values()) <= 8
        assert len(policy.buffer) == stored.images.shape[0] * factor**2
        full = replace(stored, images=torch.zeros(8, 1, 8, 8), labels=torch.arange(8) % 4)
        assert policy.nbytes <= full.nbytes
        assert stored.images.numel() * stored.images.element_size() <= 8 * 64 * 4


def test_the_user_benchmark_gives_its_variant_to_the_buffer_as_one_spec():
    """benchmarks/continual_avalanche_user.py: a variant's distillation keys become the
    policy's DistillSpec, the plugin stays the README's DistilledReplayPlugin."""
    import sys

    from benchmark_scripts import load_script  # tests/, a test-only helper

    script = load_script("continual_avalanche_user")
    try:
        plugin = script.make_plugin(script.parse_variant("iterations=7,lr_images=2,rebalance=subselect"), 20, 3)
        default = script.make_plugin({}, 20, 3)
    finally:
        sys.modules.pop("continual_avalanche_user", None)
    assert type(plugin) is DistilledReplayPlugin and plugin.seed == 3 and plugin.buffer_training == BufferTraining()
    assert plugin.storage_policy.spec == DistillSpec(iterations=7, options={"lr_images": 2}, rebalance="subselect",
                                                     seed=3)
    assert default.storage_policy.spec == DistillSpec(seed=3) and default.settings()["iterations"] == 40
