"""Datasets: digits offline, local mirrors (IDX .gz, ImageFolder, .tar.gz), clear errors."""

from __future__ import annotations

import gzip
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fedcond.data import load_dataset
from fedcond.errors import FedcondError


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCOND_CACHE", str(tmp_path / "cache"))


def test_digits_split_is_fixed_and_normalised(digits):
    assert digits.image_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.train_images.shape[0] + digits.test_images.shape[0] == 1797
    assert digits.train_images.dtype == torch.float32 and digits.train_labels.dtype == torch.int64
    assert abs(float(digits.train_images.mean())) < 1e-4 and abs(float(digits.train_images.std()) - 1) < 1e-2
    again = load_dataset("digits")
    assert torch.equal(again.test_labels, digits.test_labels)
    assert torch.bincount(digits.test_labels).min() >= 40  # stratified: every class in test
    pixels = digits.denormalize(digits.train_images)
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5


def _idx(path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x00000800 | array.ndim)  # IDX magic: unsigned bytes, ndim
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_mirror_with_gz_files_is_read_without_download(tmp_path):
    raw = tmp_path / "mirror" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _idx(raw / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    _idx(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28)))
    _idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    ds = load_dataset("mnist", data_dir=tmp_path / "mirror")
    assert ds.image_shape == (1, 28, 28) and ds.train_images.shape[0] == 20 and ds.test_images.shape[0] == 10
    assert ds.train_labels.tolist() == [i % 10 for i in range(20)]
    assert ds.mean == (0.1307,)
    assert not (raw / "train-images-idx3-ubyte").exists()  # the mirror itself is left untouched


def test_missing_mirror_names_the_place_and_the_fix(tmp_path):
    with pytest.raises(FedcondError, match=f"could not load cifar10 from {tmp_path}.*--data-dir"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_corrupt_gz_in_mirror_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (raw / f"{name}.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(FedcondError, match="corrupt archive"):
        load_dataset("mnist", data_dir=tmp_path)


def test_unknown_dataset():
    with pytest.raises(FedcondError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def _image_folder(root, size=6, colour=True):
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                rgb = np.full((size, size, 3), 40 * i + (100 if cls == "dog" else 0), dtype=np.uint8)
                if colour:
                    rgb[..., 0] = 255 - rgb[..., 0]
                Image.fromarray(rgb).save(d / f"{i}.png")


def test_image_folder_and_tarball(tmp_path):
    tree = tmp_path / "pets"
    _image_folder(tree)
    ds = load_dataset(str(tree))
    assert ds.classes == ("cat", "dog") and ds.image_shape == (3, 6, 6)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.test_images.shape[0] == 4
    tarball = tmp_path / "pets.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tree, arcname="pets")  # one wrapping folder, as archives often have
    from_tar = load_dataset(str(tarball))
    assert torch.allclose(from_tar.train_images, ds.train_images)
    cached = load_dataset(str(tarball))  # second load comes from the tensor cache
    assert torch.equal(cached.train_images, from_tar.train_images)


def test_grayscale_folder_becomes_one_channel(tmp_path):
    _image_folder(tmp_path / "g", colour=False)
    assert load_dataset(str(tmp_path / "g")).image_shape == (1, 6, 6)


def test_bad_folder_layout(tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(FedcondError, match="not an ImageFolder tree"):
        load_dataset(str(tmp_path / "flat"))
    (tmp_path / "broken.tar.gz").write_bytes(b"junk")
    with pytest.raises(FedcondError, match="cannot read archive"):
        load_dataset(str(tmp_path / "broken.tar.gz"))
