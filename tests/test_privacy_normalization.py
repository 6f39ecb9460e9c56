"""Normalisation as a privacy matter: where a data set's constants came from is recorded,
public constants are offered (and required for ImageFolder data under DP), defaults are
unchanged, and a set is always compared with data under its own constants."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fedcond.cli import app
from fedcond.data import load_dataset, renormalized, under_normalization
from fedcond.errors import FedcondError

runner = CliRunner()


def test_digits_default_is_private_and_public_constants_keep_the_pixels(digits):
    assert digits.normalization == "train" and digits.mean != (0.5,)  # computed from the training images
    public = load_dataset("digits", normalize="public")
    assert public.normalization == "public" and public.mean == (0.5,) and public.std == (0.5,)
    assert torch.allclose(public.denormalize(public.train_images), digits.denormalize(digits.train_images), atol=1e-6)
    given = load_dataset("digits", normalize="0.3:0.4")
    assert given.normalization == "given" and given.mean == (0.3,) and given.std == (0.4,)
    assert renormalized(public, "train").normalization == "train"
    # The default is what it always was: the same tensors, bit for bit.
    again = load_dataset("digits")
    assert torch.equal(again.train_images, digits.train_images) and again.mean == digits.mean
    for bad, message in (("0.5", "MEAN:STD"), ("x:y", "MEAN:STD"), ("0.5,0.5:0.5,0.5", "1 mean"),
                         ("0.5:0", "std > 0")):
        with pytest.raises(FedcondError, match=message):
            load_dataset("digits", normalize=bad)


def test_a_set_meets_the_data_under_its_own_constants(digits, digits_public):
    same = under_normalization(digits, digits.mean, digits.std)
    assert same is digits  # a set made on the default data: nothing changes
    moved = under_normalization(digits, digits_public.mean, digits_public.std)
    assert moved.mean == (0.5,) and torch.allclose(moved.train_images, digits_public.train_images, atol=1e-6)
    assert under_normalization(digits, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) is digits  # other channels: the check's job


def _image_folder(root):
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_image_folder_data_need_explicit_constants_under_dp(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCOND_CACHE", str(tmp_path / "cache"))
    folder = _image_folder(tmp_path / "pets")
    assert load_dataset(str(folder)).normalization == "train"
    with pytest.raises(FedcondError, match="--normalize MEAN:STD"):
        load_dataset(str(folder), normalize="public")
    args = ["distill", "--dataset", str(folder), "--method", "dp-dm", "--ipc", "1", "-n", "1", "-o", "bank_size=1",
            "-o", "min_class_size=0"]
    refused = runner.invoke(app, [*args, "--out", str(tmp_path / "no")])
    assert refused.exit_code == 2 and "--normalize MEAN:STD" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    given = runner.invoke(app, [*args, "--normalize", "0.5,0.5,0.5:0.25,0.25,0.25", "--out", str(tmp_path / "ok")])
    assert given.exit_code == 0, given.output


def test_given_constants_fix_an_image_folders_channels_whatever_its_images(tmp_path, monkeypatch):
    # Automatic: grey images stored as RGB collapse to one channel, until one colour image
    # arrives (the output's shape depends on one example). Given constants fix the count.
    monkeypatch.setenv("FEDCOND_CACHE", str(tmp_path / "cache"))
    grey = tmp_path / "grey"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (grey / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8), 40 * i + 10, dtype=np.uint8)).convert("RGB").save(
                    grey / split / cls / f"{i}.png")
    assert load_dataset(str(grey)).channels == 1
    colour = tmp_path / "colour"
    import shutil

    shutil.copytree(grey, colour)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
        colour / "train" / "a" / "2.png")
    assert load_dataset(str(colour)).channels == 3  # one image changed the shape of everything
    for folder in (grey, colour):
        one = load_dataset(str(folder), normalize="0.5:0.5")
        three = load_dataset(str(folder), normalize="0.5,0.5,0.5:0.5,0.5,0.5")
        assert one.channels == 1 and three.channels == 3
    auto, one = load_dataset(str(grey)), load_dataset(str(grey), normalize="0.5:0.5")
    assert torch.allclose(one.denormalize(one.train_images), auto.denormalize(auto.train_images), atol=1e-5)
    with pytest.raises(FedcondError, match="1 or 3 channels"):
        load_dataset(str(grey), normalize="0.5,0.5:0.5,0.5")
