"""DSA: siamese (same draw -> same transform), differentiable, seeded, each family correct."""

import pytest
import torch

from fedcond.augment import DSA, FAMILIES
from fedcond.errors import FedcondError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 6, c: int = 3, side: int = 16) -> torch.Tensor:
    return torch.randn(n, c, side, side, generator=gen(123))


def test_one_draw_transforms_real_and_synthetic_identically():
    dsa = DSA()
    real = images(8)
    syn = real[:3].clone()  # "synthetic" images that happen to equal some real ones
    for seed in range(20):  # covers every family in single mode
        params = dsa.sample_params(1, gen(seed))
        assert torch.equal(dsa.apply(real, params)[:3], dsa.apply(syn, params))


def test_per_class_draws_expand_to_images():
    dsa = DSA()
    x = images(6)
    params = dsa.sample_params(2, gen(0))
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    out = dsa.apply(x, params.take(rows))
    assert torch.equal(out[:3], dsa.apply(x[:3], params.take(torch.tensor([0]))))
    assert torch.equal(out[3:], dsa.apply(x[3:], params.take(torch.tensor([1]))))


def test_same_seed_same_output_different_seed_differs():
    dsa = DSA(mode="multiple")
    x = images()
    assert torch.equal(dsa(x, gen(1)), dsa(x, gen(1)))
    assert not torch.allclose(dsa(x, gen(1)), dsa(x, gen(2)))


def test_gradients_flow_to_images():
    x = images().requires_grad_(True)
    out = DSA(mode="multiple")(x, gen(0))
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_vectorised_draws_differ_per_image():
    dsa = DSA(strategy="rotate")
    x = images(1).expand(4, -1, -1, -1)
    out = dsa(x, gen(0))
    assert not torch.allclose(out[0], out[1])


def test_flip_is_a_mirror_or_identity():
    dsa = DSA(strategy="flip")
    x = images(32)
    params = dsa.sample_params(32, gen(0))
    out = dsa.apply(x, params)
    for i in range(32):
        expected = x[i].flip(2) if params.flip[i] else x[i]
        assert torch.equal(out[i], expected)
    assert 0 < int(params.flip.sum()) < 32


def test_crop_is_an_integer_shift_with_zero_fill():
    dsa = DSA(strategy="crop")
    x = images(16, side=8)
    out = dsa.apply(x, dsa.sample_params(16, gen(3)))
    shifted = 0
    for i in range(16):
        found = False
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
                expected = padded[:, 1 + dy : 9 + dy, 1 + dx : 9 + dx]
                found |= torch.equal(out[i], expected)
        assert found, "crop output is not a zero-filled shift of at most 1 pixel (12.5% of 8)"
        shifted += not torch.equal(out[i], x[i])
    assert shifted > 0


def test_cutout_zeroes_one_half_side_square():
    dsa = DSA(strategy="cutout")
    x = images(8, c=1, side=8) + 10  # no natural zeros
    out = dsa.apply(x, dsa.sample_params(8, gen(0)))
    for i in range(8):
        zero = out[i, 0] == 0
        assert torch.equal(out[i][:, ~zero], x[i][:, ~zero])
        assert 1 <= int(zero.sum()) <= 16  # a 4x4 square, possibly clipped at the border


def test_color_changes_values_but_not_geometry():
    dsa = DSA(strategy="color")
    x = images(4)
    params = dsa.sample_params(4, gen(0))
    out = dsa.apply(x, params)
    b, s, c = (
        params.brightness.view(-1, 1, 1, 1),
        params.saturation.view(-1, 1, 1, 1),
        params.contrast.view(-1, 1, 1, 1),
    )
    y = x + b
    m = y.mean(1, keepdim=True)
    y = (y - m) * s + m
    m = y.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(out, (y - m) * c + m, atol=1e-5)


@pytest.mark.parametrize("family", ["scale", "rotate"])
def test_scale_and_rotate_resample_smoothly(family):
    dsa = DSA(strategy=family)
    x = images(4)
    params = dsa.sample_params(4, gen(0))
    out = dsa.apply(x, params)
    assert out.shape == x.shape and not torch.allclose(out, x)
    identity = dsa.sample_params(4, gen(0))
    object.__setattr__(identity, "scale", torch.ones(4, 2))
    object.__setattr__(identity, "rotate", torch.zeros(4))
    assert torch.allclose(dsa.apply(x, identity), x, atol=1e-4)


def test_single_mode_applies_one_family_per_draw():
    dsa = DSA()
    params = dsa.sample_params(200, gen(0))
    changed = torch.stack([
        params.brightness != 0,
        params.crop_u[:, 0] >= 0,
        params.cutout_on,
        params.flip,
        (params.scale != 1).any(dim=1),
        params.rotate != 0,
    ])
    assert int(changed.sum(dim=0).max()) == 1
    assert params.active == frozenset(FAMILIES)


def test_bad_strategy_is_a_user_error():
    with pytest.raises(FedcondError, match="strategy"):
        DSA(strategy="color_blur")
