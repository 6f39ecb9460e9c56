"""Multi-formation: mosaics of smaller images, stored at the bytes of one image each."""

import pytest
import torch
from torch.nn import functional as F

from fedcond.audit.set_audit import audit_set
from fedcond.continual.buffer import DistillSpec
from fedcond.distill import DistillInputs, get_distiller
from fedcond.distill.coreset import fill_mosaics
from fedcond.errors import FedcondError
from fedcond.evaluate import EvalConfig, evaluate_synthetic
from fedcond.federated.server_training import pool_sets
from fedcond.formation import check_factor, decode, encode, repeat_per_tile
from fedcond.synthetic import InvalidSyntheticSet, SyntheticSet


def small(x: torch.Tensor, factor: int) -> torch.Tensor:
    """What a tile holds: the image area-downsampled by ``factor``."""
    return F.interpolate(x, scale_factor=1 / factor, mode="area")


def test_encode_tiles_downsampled_images_row_major_and_decode_upsamples_them():
    x = torch.randn(8, 3, 12, 12)
    mosaics = encode(x, 2)
    assert mosaics.shape == (2, 3, 12, 12)
    # mosaic 0, tile (0, 1) is image 1; mosaic 1, tile (1, 0) is image 6
    assert torch.allclose(mosaics[0, :, :6, 6:], small(x[1:2], 2)[0])
    assert torch.allclose(mosaics[1, :, 6:, :6], small(x[6:7], 2)[0])
    tiles = decode(mosaics, 2)
    assert tiles.shape == (8, 3, 12, 12)
    expected = F.interpolate(small(x, 2), size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(tiles, expected, atol=1e-6)
    assert decode(x, 1) is x and encode(x, 1) is x


def test_decode_passes_gradients_to_every_pixel_and_labels_follow_the_tiles():
    mosaics = torch.randn(2, 1, 8, 8, requires_grad=True)
    decode(mosaics, 2).sum().backward()
    assert bool((mosaics.grad != 0).all())
    assert repeat_per_tile(torch.tensor([3, 7]), 2).tolist() == [3] * 4 + [7] * 4
    assert repeat_per_tile(torch.eye(2), 3).shape == (18, 2)


def test_factor_must_divide_the_image():
    check_factor(2, (28, 28))
    for bad in (0, 3, 1.5):
        with pytest.raises(FedcondError):
            check_factor(bad, (8, 8))
    with pytest.raises(FedcondError, match="do not fill"):
        encode(torch.randn(5, 1, 8, 8), 2)


def test_a_mosaic_set_keeps_its_factor_through_bytes_and_trains_on_its_tiles(tiny_set):
    plain_bytes = tiny_set.to_bytes()
    assert b"factor" not in plain_bytes  # plain sets keep the header they always had
    mosaic = SyntheticSet(**{**tiny_set.__dict__, "factor": 2, "storage_dtype": "uint8"})
    back = SyntheticSet.from_bytes(mosaic.to_bytes())
    assert back.factor == 2 and back.num_images == tiny_set.num_images
    assert abs(mosaic.nbytes - SyntheticSet(**{**tiny_set.__dict__, "storage_dtype": "uint8"}).nbytes) <= 16
    tiles = back.decoded()
    assert tiles.factor == 1 and tiles.num_images == 4 * back.num_images
    assert tiles.labels.tolist() == back.labels.repeat_interleave(4).tolist()
    images, labels = pool_sets([back, tiny_set])
    assert images.shape[0] == labels.shape[0] == 5 * tiny_set.num_images
    assert SyntheticSet.from_bytes(plain_bytes).factor == 1
    with pytest.raises(InvalidSyntheticSet, match="does not divide"):
        SyntheticSet(**{**tiny_set.__dict__, "factor": 3}).validate()


def test_dm_starts_every_tile_from_its_own_real_image_and_learns(digits):
    dm = get_distiller("dm")
    start = dm.distill(digits, dm.config_class(ipc=2, iterations=0, factor=2), torch.Generator().manual_seed(0))
    assert start.factor == 2 and start.num_images == 20 and start.config["factor"] == 2
    for image, label in zip(start.images, start.labels):
        own = small(digits.train_images[digits.train_labels == label], 2)
        for tile in encode_inverse(image[None], 2):
            assert float((own - tile).flatten(1).norm(dim=1).min()) < 1e-5
    logged = []
    dm.distill(digits, dm.config_class(ipc=2, iterations=30, factor=2, log_every=10),
               torch.Generator().manual_seed(0), callbacks=[lambda i, n, m: logged.append(m["loss"])])
    assert logged[-1] < logged[0]


def encode_inverse(mosaics: torch.Tensor, factor: int) -> torch.Tensor:
    """The small tiles of mosaics, row-major (the inverse of ``encode`` before upsampling)."""
    n, c, h, w = mosaics.shape
    t = mosaics.reshape(n, c, factor, h // factor, factor, w // factor).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(n * factor * factor, c, h // factor, w // factor)


def test_random_mosaics_fill_small_classes_from_their_own_images(digits):
    assert fill_mosaics(torch.arange(5), torch.zeros(5, dtype=torch.long), 4).tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    rnd = get_distiller("random")
    subset = digits.subset(torch.cat([torch.nonzero(digits.train_labels == c).flatten()[:n]
                                      for c, n in ((0, 3), (1, 40))]))
    sset = rnd.distill(subset, rnd.config_class(ipc=2, factor=2), torch.Generator().manual_seed(1))
    assert sset.factor == 2 and sset.class_counts()[:2] == [1, 2]
    tiles = encode_inverse(sset.images[:1], 2)
    own = small(subset.train_images[subset.train_labels == 0], 2)
    assert all(float((own - t).flatten(1).norm(dim=1).min()) < 1e-5 for t in tiles)


def test_evaluation_trains_on_the_decoded_tiles(digits, monkeypatch):
    import fedcond.evaluate as evaluate

    seen = []
    monkeypatch.setattr(evaluate, "_train_and_test", lambda data, x, y, config, seed: seen.append((x, y)) or 0.5)
    rnd = get_distiller("random")
    sset = rnd.distill(digits, rnd.config_class(ipc=1, factor=2), torch.Generator().manual_seed(0))
    result = evaluate_synthetic(sset, digits, EvalConfig(epochs=1), runs=1)
    (x, y), = seen
    assert x.shape == (40, 1, 8, 8) and torch.equal(y, sset.labels.repeat_interleave(4))
    assert torch.allclose(x, sset.decoded().images)
    assert result.num_train_images == 10 and result.extra["factor"] == 2


def test_places_that_cannot_use_mosaics_refuse_them(digits, tiny_set):
    mosaic = SyntheticSet(**{**tiny_set.__dict__, "factor": 2})
    with pytest.raises(FedcondError, match="mosaics"):
        audit_set(mosaic, digits)
    with pytest.raises(FedcondError, match="redistill"):
        DistillSpec(method="dm", options={"factor": 2}, rebalance="redistill")
    dm = get_distiller("dm")
    with pytest.raises(FedcondError, match="same factor"):
        dm.distill(digits, dm.config_class(ipc=2, iterations=1), torch.Generator(),
                   inputs=DistillInputs(initial=mosaic))
