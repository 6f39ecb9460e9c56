"""The shared training recipe and the spread-over-seeds helpers."""

import math

import pytest

from fedcond.augment import DSA
from fedcond.errors import FedcondError
from fedcond.recipe import Recipe, check_same_recipe
from fedcond.stats import paired_gain, spread


def test_auto_augmentation_depends_on_channels_and_none_turns_it_off():
    recipe = Recipe()
    assert recipe.augment_strategy(1) == "crop_scale_rotate"
    assert recipe.augment_strategy(3) == "color_crop_cutout_flip_scale_rotate"
    assert isinstance(recipe.augmenter(3), DSA)
    assert Recipe(augment="none").augmenter(3) is None
    kwargs = Recipe(augment="none", schedule="constant").train_kwargs(1)
    assert kwargs == {"momentum": 0.9, "weight_decay": 5e-4, "augment": None, "lr_decay_at_half": False}


def test_bad_recipes_are_refused_with_a_clear_error():
    with pytest.raises(FedcondError, match="schedule"):
        Recipe(schedule="cosine")
    with pytest.raises(FedcondError):
        Recipe(augment="crop_wobble")
    with pytest.raises(FedcondError, match="unknown key"):
        Recipe.from_json({"augment": "none", "lr": 0.1})
    assert Recipe.from_json(Recipe(augment="crop").to_json()) == Recipe(augment="crop")


def test_unequal_recipes_are_refused_unless_asked_for_and_then_reported_first():
    same = {"fedavg": Recipe(), "fedcond": Recipe()}
    assert check_same_recipe(same) == []
    unequal = {"fedavg": Recipe(augment="none"), "fedcond": Recipe()}
    with pytest.raises(FedcondError, match="different recipes"):
        check_same_recipe(unequal)
    lines = check_same_recipe(unequal, allow_unequal=True)
    assert lines and lines[0].startswith("UNEQUAL RECIPES") and "fedavg" in lines[0] and "fedcond" in lines[0]


def test_spread_uses_the_sample_std_and_a_t_interval():
    s = spread([0.60, 0.62, 0.64])
    assert s.n == 3 and s.mean == pytest.approx(0.62)
    assert s.std == pytest.approx(0.02)  # sample std (n - 1), not the population's 0.0163
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2)
    assert s.low == pytest.approx(0.62 - half) and s.high == pytest.approx(0.62 + half)
    one = spread([0.5])
    assert one.std is None and one.low is None and not one.above_zero
    assert "no interval" in one.format()


def test_a_paired_gain_holds_only_when_its_interval_is_above_zero():
    gain = paired_gain([0.70, 0.71, 0.72], [0.60, 0.62, 0.61])
    assert gain.mean == pytest.approx(0.10) and gain.above_zero
    noisy = paired_gain([0.70, 0.60, 0.72], [0.65, 0.66, 0.64])
    assert not noisy.above_zero
    with pytest.raises(ValueError):
        paired_gain([0.1, 0.2], [0.1])
