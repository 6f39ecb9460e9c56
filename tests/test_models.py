"""Every registered model runs at 8x8, 28x28 and 32x32 with 1 or 3 channels."""

from __future__ import annotations

import pytest
import torch

from fedcond.errors import FedcondError
from fedcond.models import MODEL_NAMES, ConvNet, get_model


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("channels, size", [(1, 8), (1, 28), (3, 32), (3, 8)])
def test_forward_and_embed_shapes(name, channels, size):
    model = get_model(name, channels, 7, (size, size), seed=0)
    x = torch.randn(2, channels, size, size)
    feats = model.embed(x)
    assert feats.dim() == 2 and feats.shape[0] == 2
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()  # trainable end to end
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [8, 28, 32])
def test_embeddings_depend_on_the_input(name, size):
    # Instance norm over 1x1 maps once made VGG11 embed every 8x8/28x28 image identically (chance accuracy).
    model = get_model(name, 1, 10, (size, size), seed=0).eval()
    with torch.no_grad():
        feats = model.embed(torch.randn(4, 1, size, size, generator=torch.Generator().manual_seed(0)))
    assert feats.std(dim=0).max() > 1e-3  # the broken VGG11 gave 1e-7 (float noise)


def test_convnet_depth_follows_resolution():
    assert ConvNet(1, 10, (28, 28)).feature_dim == 128 * 3 * 3
    assert ConvNet(3, 10, (32, 32)).feature_dim == 128 * 4 * 4
    assert ConvNet(1, 10, (8, 8)).feature_dim == 128 * 2 * 2  # last block sees 4x4, not 2x2
    assert ConvNet(1, 10, (2, 2)).feature_dim == 128 * 1 * 1  # always at least one block


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = get_model("convnet", 1, 10, (8, 8), seed=3)
    b = get_model("convnet", 1, 10, (8, 8), seed=3)
    c = get_model("convnet", 1, 10, (8, 8), seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_unknown_model():
    with pytest.raises(FedcondError, match="unknown model 'nope'"):
        get_model("nope", 1, 10, (8, 8))


def test_instance_norm_normalises_a_channels_last_input_where_it_lies():
    """The ConvNet's instance norm: GroupNorm's own result for a contiguous or float32 input
    (bit for bit); for a channels-last bfloat16 one (DM's bfloat16 pass) the same numbers up
    to bfloat16 rounding, computed without leaving the layout, with gradients."""
    from fedcond.models import InstanceNorm

    g = torch.Generator().manual_seed(0)
    norm = InstanceNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(8, generator=g) + 0.5)
        norm.bias.copy_(torch.rand(8, generator=g) - 0.5)
    plain = torch.nn.GroupNorm(8, 8)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(3, 8, 6, 5, generator=g) * 3 + 1
    assert torch.equal(norm(x), plain(x))
    assert torch.equal(norm(x.contiguous(memory_format=torch.channels_last)),
                       plain(x.contiguous(memory_format=torch.channels_last)))
    low = x.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = norm(low)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert not out.is_contiguous()
    assert torch.allclose(out.float(), plain(x), atol=0.05)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out.float() * weights).sum().backward()
    ref = x.clone().requires_grad_(True)
    (plain(ref) * weights).sum().backward()
    assert torch.allclose(low.grad.float(), ref.grad, atol=0.05)


def test_a_channels_last_convnet_in_bfloat16_embeds_as_the_float32_one():
    net = get_model("convnet", 1, 10, (28, 28), seed=0).eval()
    x = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net.embed(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net.to(memory_format=torch.channels_last).embed(x).float()
    assert ((out - ref).norm() / ref.norm()).item() < 0.02  # bfloat16 rounding (measured 0.009)
    assert ((out.mean(0) - ref.mean(0)).norm() / ref.mean(0).norm()).item() < 0.01
