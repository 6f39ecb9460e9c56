"""SyntheticSet: byte-exact round trips, exact sizes, and rejection of malformed files."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save as st_save

from fedcond.synthetic import InvalidSyntheticSet, SyntheticSet


@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8"])
def test_round_trip_is_byte_exact_and_nbytes_matches_file(tiny_set, tmp_path, dtype):
    tiny_set.storage_dtype = dtype
    path = tmp_path / "s.safetensors"
    written = tiny_set.save(path)
    assert written == path.stat().st_size == tiny_set.nbytes
    loaded = SyntheticSet.load(path)
    assert loaded.to_bytes() == path.read_bytes()  # save(load(f)) == f
    assert loaded.classes == tiny_set.classes and loaded.method == "random" and loaded.ipc == 2
    assert loaded.config == {"ipc": 2} and loaded.seed == 0
    assert torch.equal(loaded.labels, tiny_set.labels)
    tol = {"float32": 0.0, "float16": 1e-2, "uint8": 1.0 / 255 / min(tiny_set.std) + 1e-5}[dtype]
    if dtype == "uint8":  # uint8 stores clamped pixels; compare inside the representable range
        pix = tiny_set.images * tiny_set.std[0] + tiny_set.mean[0]
        expected = (pix.clamp(0, 1) - tiny_set.mean[0]) / tiny_set.std[0]
    else:
        expected = tiny_set.images
    assert (loaded.images - expected).abs().max() <= tol


def test_quantised_storage_is_smaller(tiny_set):
    sizes = {}
    for dtype in ("float32", "float16", "uint8"):
        tiny_set.storage_dtype = dtype
        sizes[dtype] = tiny_set.nbytes
    assert sizes["uint8"] < sizes["float16"] < sizes["float32"]


def test_soft_labels_round_trip(tiny_set, tmp_path):
    soft = torch.softmax(torch.randn(tiny_set.num_images, 10, generator=torch.Generator().manual_seed(1)), dim=1)
    s = replace(tiny_set, labels=soft)
    s.save(tmp_path / "soft.safetensors")
    loaded = SyntheticSet.load(tmp_path / "soft.safetensors")
    assert loaded.soft_labels and torch.equal(loaded.labels, soft)
    assert torch.equal(loaded.hard_labels, soft.argmax(1))


def _payload(images, labels, meta):
    return st_save({"images": images, "labels": labels}, metadata={"fedcond": json.dumps(meta)})


def test_truncated_file_is_rejected(tiny_set, tmp_path):
    data = tiny_set.to_bytes()
    for cut in (4, 100, len(data) - 7):
        (tmp_path / "t.safetensors").write_bytes(data[:cut])
        with pytest.raises(InvalidSyntheticSet, match="truncated|corrupt"):
            SyntheticSet.load(tmp_path / "t.safetensors")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x, y, m: (x.fill_(float("nan")), y, m), "NaN or Inf"),
        (lambda x, y, m: (x.index_fill_(0, torch.tensor([0]), float("inf")), y, m), "NaN or Inf"),
        (lambda x, y, m: (x, y.fill_(10), m), "label out of range"),
        (lambda x, y, m: (x, y.fill_(-1), m), "label out of range"),
        (lambda x, y, m: (x[:, :, :4].contiguous(), y, m), "wrong image shape"),
        (lambda x, y, m: (x[0].contiguous(), y, m), "wrong image shape"),
        (lambda x, y, m: (x, y[:5].contiguous(), m), "count mismatch"),
        (lambda x, y, m: (x.double(), y, m), "stored as torch.float64"),
        (lambda x, y, m: (x, y.float(), m), "hard labels must be int64"),
        (lambda x, y, m: (x, y, {**m, "num_images": 3}), "count mismatch"),
        (lambda x, y, m: (x, y, {k: v for k, v in m.items() if k != "classes"}), "malformed metadata"),
    ],
)
def test_malformed_payloads_are_rejected(tiny_set, mutate, message):
    meta = tiny_set._metadata()
    x, y, meta = mutate(tiny_set.images.clone(), tiny_set.labels.clone(), meta)
    with pytest.raises(InvalidSyntheticSet, match=message):
        SyntheticSet.from_bytes(_payload(x, y, meta))


def test_not_a_fedcond_file_and_size_cap(tiny_set, tmp_path):
    with pytest.raises(InvalidSyntheticSet, match="not a fedcond synthetic set"):
        SyntheticSet.from_bytes(st_save({"images": tiny_set.images}))
    data = tiny_set.to_bytes()
    with pytest.raises(InvalidSyntheticSet, match="above the cap"):
        SyntheticSet.from_bytes(data, max_bytes=len(data) - 1)
    (tmp_path / "big.safetensors").write_bytes(data)
    with pytest.raises(InvalidSyntheticSet, match="above the cap"):
        SyntheticSet.load(tmp_path / "big.safetensors", max_bytes=100)
    # a header claiming more bytes than exist
    bogus = struct.pack("<Q", 10**9) + b"{}"
    with pytest.raises(InvalidSyntheticSet, match="truncated"):
        SyntheticSet.from_bytes(bogus)


def test_validate_rejects_bad_objects(tiny_set):
    with pytest.raises(InvalidSyntheticSet, match="NaN"):
        replace(tiny_set, images=tiny_set.images * float("nan")).validate()
    with pytest.raises(InvalidSyntheticSet, match="columns"):
        replace(tiny_set, labels=torch.zeros(tiny_set.num_images, 3)).validate()
    with pytest.raises(InvalidSyntheticSet, match="channels"):
        replace(tiny_set, images=tiny_set.images.repeat(1, 3, 1, 1)).validate()
