"""Networks used by distillation and evaluation, and a registry by name.

Every model maps (N, C, H, W) to logits and exposes ``embed(x)`` (the features before the
classifier), which distribution matching and herding use. All of them work from 8x8
(scikit-learn digits) to 32x32, with 1 or 3 channels: pooling stops once the feature map
is 1x1, and classifiers size themselves with a dummy forward pass.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fedcond.errors import FedcondError


class InstanceNorm(nn.GroupNorm):
    """Instance norm with affine parameters: GroupNorm with one group per channel, the
    literature's ConvNet choice (works for batch size 1 too).

    A float32 or contiguous input takes GroupNorm's own path, bit for bit. A channels-last
    bfloat16 input (DM's bfloat16 pass on a CPU) is normalised where it lies: PyTorch's CPU
    group norm on it is far slower than on contiguous input, converting back and forth cost
    half of that pass, and ``var_mean`` over H x W is slow too; seen as (N, HW, C), the
    per-channel means of x and x^2 are two batched matrix-vector products, which keep the
    bfloat16 ConvNet's channels-last gain (benchmarks/results/fast_by_default.md, layout).
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.dtype not in (torch.bfloat16, torch.float16) or not _channels_last(x):
            return super().forward(x)  # E[x^2] - E[x]^2 below suits rounded passes, not exact ones
        n, c, h, w = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c)  # a view: channels-last memory is NHWC
        average = torch.full((n, 1, h * w), 1.0 / (h * w), dtype=x.dtype, device=x.device)
        mean = torch.bmm(average, pixels).float()
        var = (torch.bmm(average, torch.square(pixels)).float() - mean * mean).clamp_min(0)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, 1, c)
        shift = self.bias.view(1, 1, c) - mean * scale
        return torch.addcmul(shift.to(x.dtype).view(n, c, 1, 1), x, scale.to(x.dtype).view(n, c, 1, 1))


def _channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is laid out channels-last (and not also contiguous)."""
    try:
        return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:  # inside torch.func.vmap (dm_batch), where only contiguity can be asked
        return False


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instancenorm":
        return InstanceNorm(channels)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ConvNet(nn.Module):
    """The distillation literature's ConvNet: [conv3x3-norm-relu-avgpool] x depth + linear.

    ``depth`` defaults to 3 but shrinks with the resolution: a block is added only while
    its input is at least 4x4, because instance norm over a 2x2 map leaves almost no
    information (on 8x8 digits, depth 2 trains to 98 % on all data where depth 3 reaches 94 %).
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        h, w = image_size
        layers: list[nn.Module] = []
        c = channels
        for _ in range(depth):
            if layers and min(h, w) < 4:
                break
            layers += [nn.Conv2d(c, width, 3, padding=1), _norm(norm, width), nn.ReLU(inplace=True)]
            layers.append(nn.AvgPool2d(2))
            c, h, w = width, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = c * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class MLP(nn.Module):
    """Three-layer perceptron (hidden 128) on flattened pixels."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], width: int = 128) -> None:
        super().__init__()
        d = channels * image_size[0] * image_size[1]
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.feature_dim = width
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def _pool_if_room(h: int, w: int) -> tuple[nn.Module, int, int]:
    if min(h, w) >= 2:
        return nn.MaxPool2d(2), h // 2, w // 2
    return nn.Identity(), h, w


class _FeatureClassifier(nn.Module):
    """A conv feature stack, optional hidden linear layers, and a linear classifier.

    The flattened feature size is found with a dummy forward pass, so any input size works.
    """

    def __init__(self, features: nn.Module, channels: int, num_classes: int, image_size: tuple[int, int],
                 hidden: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.features = features
        with torch.no_grad():
            d = self.features(torch.zeros(2, channels, *image_size)).flatten(1).shape[1]
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(d, width), nn.ReLU(inplace=True)]
            d = width
        self.head = nn.Sequential(*layers)
        self.feature_dim = d
        self.classifier = nn.Linear(d, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


def LeNet(channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """LeNet-5 style: two 5x5 convs (padded, so 8x8 inputs fit) and a 120-84 head."""
    h, w = image_size
    p1, h, w = _pool_if_room(h, w)
    p2, h, w = _pool_if_room(h, w)
    feats = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(inplace=True), p1,
        nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(inplace=True), p2,
    )
    return _FeatureClassifier(feats, channels, num_classes, image_size, hidden=(120, 84))


def AlexNet(channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """The small-image AlexNet of the distillation benchmarks (5 convs, 3 pools)."""
    h, w = image_size
    p1, h, w = _pool_if_room(h, w)
    p2, h, w = _pool_if_room(h, w)
    p3, h, w = _pool_if_room(h, w)
    feats = nn.Sequential(
        nn.Conv2d(channels, 128, 5, padding=2), nn.ReLU(inplace=True), p1,
        nn.Conv2d(128, 192, 5, padding=2), nn.ReLU(inplace=True), p2,
        nn.Conv2d(192, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 192, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(192, 192, 3, padding=1), nn.ReLU(inplace=True), p3,
    )
    return _FeatureClassifier(feats, channels, num_classes, image_size)


def VGG11(channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    """VGG-11 with instance norm (as in the distillation literature); pools stop at 1x1.

    Convolutions that see a 1x1 map (the last stages at 28x28 and 8x8; none at 32x32) are
    1x1 convolutions without norm: instance norm over a single value outputs its bias alone,
    so every input embedded the same (chance accuracy), and a padded 3x3 kernel there uses
    only its centre tap while being initialised for nine, which made the signal vanish.
    """
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    layers: list[nn.Module] = []
    c, (h, w) = channels, image_size
    for v in cfg:
        if v == "M":
            pool, h, w = _pool_if_room(h, w)
            layers.append(pool)
        else:
            k, norm = (3, "instancenorm") if h * w > 1 else (1, "none")
            layers += [nn.Conv2d(c, int(v), k, padding=k // 2), _norm(norm, int(v)), nn.ReLU(inplace=True)]
            c = int(v)
    return _FeatureClassifier(nn.Sequential(*layers), channels, num_classes, image_size)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images (3x3 stem, no max-pool), global average pooling."""

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        )
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.feature_dim = 512
        self.classifier = nn.Linear(512, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


_REGISTRY: dict[str, Callable[[int, int, tuple[int, int]], nn.Module]] = {
    "convnet": lambda c, k, s: ConvNet(c, k, s, norm="instancenorm"),
    "convnet-bn": lambda c, k, s: ConvNet(c, k, s, norm="batchnorm"),
    "convnet-nonorm": lambda c, k, s: ConvNet(c, k, s, norm="none"),
    "mlp": MLP,
    "lenet": LeNet,
    "alexnet": AlexNet,
    "vgg11": VGG11,
    "resnet18": ResNet18,
}
MODEL_NAMES = tuple(_REGISTRY)


def get_model(
    name: str, channels: int, num_classes: int, image_size: tuple[int, int], seed: int | None = None
) -> nn.Module:
    """Build a freshly initialised model by registry name (see :data:`MODEL_NAMES`).

    With ``seed`` the weights are drawn from a generator seeded with it, without touching
    the global RNG state (torch's initialisers only read the global generator, so it is
    forked); without, from the global generator.
    """
    try:
        factory = _REGISTRY[name.lower()]
    except KeyError:
        raise FedcondError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)}") from None
    if seed is None:
        return factory(channels, num_classes, tuple(image_size))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(channels, num_classes, tuple(image_size))
