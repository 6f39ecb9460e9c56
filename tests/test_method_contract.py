"""Every registered method honours the Distiller contract the federated client and the
continual buffer rely on: a subset of classes in, a valid SyntheticSet out, min(ipc, count)
images per present class (DP-DM: ipc per class it keeps), saved and loaded unchanged."""

import textwrap

import pytest
import torch

from fedcond.distill import Distiller, DistillInputs, get_distiller, method_names
from fedcond.errors import FedcondError
from fedcond.synthetic import SyntheticSet
from method_settings import FAST  # tests/, shared with test_cuda.py

# DP-DM gives each class it keeps ipc images whatever the class's size, which is private
# (min(ipc, count) would publish it), and keeps only classes whose noisy size is
# clearly above zero: the 2-image class is below FAST's threshold (tests/test_dp_dm.py).
COUNTS = {"dp-dm": [0, 0, 3, 0, 0, 0, 0, 3, 0, 0]}


def test_every_method_is_covered():
    assert set(method_names()) - {"random", "herding", "kcenter"} == set(FAST)


@pytest.mark.parametrize("method", method_names())
def test_partial_classes_in_valid_set_out(digits, digits_public, method, tmp_path):
    if method == "dp-dm":  # DP-DM refuses normalisation computed from the private images
        digits = digits_public
    labels = digits.train_labels
    idx = torch.cat([torch.nonzero(labels == 2).flatten(), torch.nonzero(labels == 7).flatten(),
                     torch.nonzero(labels == 9).flatten()[:2]])
    d = get_distiller(method)
    config = d.config_class.from_dict({"ipc": 3, **FAST.get(method, {})})
    sset = d.distill(digits.subset(idx), config, torch.Generator().manual_seed(0))
    assert sset.method == method and sset.num_classes == 10
    assert sset.class_counts() == COUNTS.get(method, [0, 0, 3, 0, 0, 0, 0, 3, 0, 2])
    assert torch.isfinite(sset.images).all()
    sset.save(tmp_path / "s.safetensors")
    back = SyntheticSet.load(tmp_path / "s.safetensors")
    assert torch.equal(back.images, sset.images) and torch.equal(back.labels, sset.labels)


# What each method takes besides the data (fedcond.distill.base.DistillInputs).
ACCEPTS = {"dm": {"initial", "embed_model"}, "random": set(), "herding": set(), "kcenter": set(), "dp-dm": set()}


@pytest.mark.parametrize("method", method_names())
def test_every_method_is_one_distiller_and_refuses_inputs_it_does_not_take(digits, tiny_set, method):
    d = get_distiller(method)
    assert isinstance(d, Distiller)
    assert d.accepts == ACCEPTS.get(method, {"initial"})  # every iterative method refines a starting set
    offered = {"initial": tiny_set, "embed_model": torch.nn.Identity()}
    for name in sorted(set(offered) - d.accepts):
        with pytest.raises(FedcondError, match=f"^method {method} takes no {name} input"):
            d.distill(digits, d.config_class(ipc=1), torch.Generator(), inputs=DistillInputs(**{name: offered[name]}))


def test_distill_many_is_distill_per_data_set(digits):
    """The base class's loop (what every method but DM's batched path runs)."""
    halves = [digits.subset(torch.arange(0, 300)), digits.subset(torch.arange(300, 600))]
    d = get_distiller("herding")
    config = d.config_class(ipc=2, feature_epochs=0)
    many = d.distill_many(halves, config, [torch.Generator().manual_seed(s) for s in (1, 2)])
    for data, seed, sset in zip(halves, (1, 2), many):
        assert torch.equal(sset.images, d.distill(data, config, torch.Generator().manual_seed(seed)).images)
    with pytest.raises(ValueError, match="generators"):
        d.distill_many(halves, config, [torch.Generator()])


def test_the_recipe_in_the_package_docstring_makes_a_working_method(digits, monkeypatch):
    """fedcond.distill's docstring shows how to add a method with a random coreset: run it."""
    import fedcond.distill
    from fedcond.distill import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # register the example in a copy
    code = fedcond.distill.__doc__.split("::\n", 1)[1].split("\nand the line", 1)[0]
    exec(textwrap.dedent(code), {})
    recipe = get_distiller("my-random").distill(digits, base.DistillConfig(ipc=2), torch.Generator().manual_seed(4))
    builtin = get_distiller("random").distill(digits, base.DistillConfig(ipc=2), torch.Generator().manual_seed(4))
    assert recipe.method == "my-random" and recipe.num_images == 20
    assert torch.equal(recipe.images, builtin.images) and torch.equal(recipe.labels, builtin.labels)
