"""The evaluation protocol: train fresh models on a set, R times, report mean ± std.

The field's standard: a freshly initialised network (ConvNet by default) trained from
scratch on the synthetic set with SGD (momentum 0.9, lr 0.01, weight decay 5e-4, lr / 10 at
half the epochs, batch 256), then tested on the real test split; repeated over R seeds.
Training runs in ``EvalConfig.precision`` (:mod:`fedcond.precision`: bfloat16 autocast on
hardware with fast bfloat16, float32 elsewhere, by default); testing always in float32.
The same protocol on all real data gives the upper bound, on random real subsets of the
same size the lower bound. Soft labels made by a teacher at temperature T (``fedcond
relabel``) are learnt with the distillation loss at that T; :func:`evaluate_architectures`
repeats the protocol across networks (cross-architecture generalisation).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import torch

from fedcond.data import ImageDataset
from fedcond.errors import FedcondError
from fedcond.models import MODEL_NAMES, get_model
from fedcond.precision import DEFAULT_PRECISION, check_precision, resolve_precision
from fedcond.synthetic import SyntheticSet
from fedcond.train import Augment, accuracy, train_model
from fedcond.zca import zca_dataset, zca_regularization


@dataclass
class EvalConfig:
    """Hyper-parameters of the evaluation protocol."""

    model: str = "convnet"
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    dsa: bool = False  # differentiable siamese augmentation while training (see fedcond.augment)
    # DSA families; digits want no flip (e.g. "crop_scale_rotate", as DC evaluates MNIST).
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    # Knowledge-distillation temperature for soft labels; None: the set's own
    # ``config["kd_temperature"]`` (written by fedcond.relabel), 1.0 when it has none.
    kd_temperature: float | None = None
    # Training arithmetic (fedcond.precision): auto = bfloat16 autocast on devices with fast
    # bfloat16, else float32; the results record the resolved value.
    precision: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        check_precision(self.precision)
        if self.model.lower() not in MODEL_NAMES:
            raise FedcondError(f"unknown model {self.model!r}: use one of {', '.join(MODEL_NAMES)}")
        if self.epochs < 1:
            raise FedcondError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0 or self.batch_size < 1:
            raise FedcondError("lr must be > 0 and batch size >= 1")
        if self.kd_temperature is not None and not self.kd_temperature > 0:
            raise FedcondError(f"kd temperature must be > 0, got {self.kd_temperature}")
        if self.dsa:
            from fedcond.augment import parse_strategy  # noqa: PLC0415  (torch's augmentation only when a recipe augments)

            parse_strategy(self.dsa_strategy)  # raises a FedcondError naming the bad family


@dataclass
class EvalResult:
    """Accuracies (fractions in [0, 1]) of R independently trained models."""

    accuracies: list[float]
    config: EvalConfig
    kind: str  # "synthetic", "full" or "random"
    num_train_images: int
    extra: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        # Population std over runs, as the distillation papers report it.
        return statistics.pstdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def to_json(self) -> dict:
        return {
            "accuracy_mean": self.mean,
            "accuracy_std": self.std,
            "runs": len(self.accuracies),
            "accuracies": self.accuracies,
            "kind": self.kind,
            "num_train_images": self.num_train_images,
            "model": self.config.model,
            "epochs": self.config.epochs,
            "eval_config": asdict(self.config),
            "precision": self.config.precision,
            **self.extra,
        }


def _augmenter(config: EvalConfig) -> Augment | None:
    if not config.dsa:
        return None
    from fedcond.augment import DSA  # noqa: PLC0415  (optional until used)

    return DSA(strategy=config.dsa_strategy)


def _train_and_test(
    dataset: ImageDataset,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: EvalConfig,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> float:
    model = train_fresh_model(dataset, images, labels, config, seed, on_epoch)
    return accuracy(model, dataset.test_images, dataset.test_labels)


def train_fresh_model(
    dataset: ImageDataset,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: EvalConfig,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> torch.nn.Module:
    """One model of the protocol: ``config.model`` initialised from ``seed`` and trained on
    (images, labels) with the protocol's settings; the trained model (the privacy audit
    attacks it)."""
    c, h, w = dataset.image_shape
    model = get_model(config.model, c, dataset.num_classes, (h, w), seed=seed).to(dataset.device)
    gen = torch.Generator().manual_seed(seed)
    train_model(
        model, images, labels, config.epochs, lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, batch_size=config.batch_size, generator=gen,
        # Hard labels ignore the temperature; soft ones were given theirs by evaluate_synthetic.
        augment=_augmenter(config), on_epoch=on_epoch, temperature=config.kd_temperature or 1.0,
        precision=resolve_precision(config.precision, dataset.device),
    )
    return model


def resolved(config: EvalConfig, dataset: ImageDataset) -> EvalConfig:
    """``config`` with its precision resolved for ``dataset``'s device (what results record)."""
    return replace(config, precision=resolve_precision(config.precision, dataset.device))


def check_compatible(sset: SyntheticSet, dataset: ImageDataset) -> None:
    """Raise a FedcondError if ``sset`` cannot be evaluated on ``dataset``."""
    if tuple(sset.image_shape) != tuple(dataset.image_shape):
        raise FedcondError(
            f"synthetic set images are {sset.image_shape} but {dataset.name} images are {dataset.image_shape}: "
            "evaluate on the data set it was made from"
        )
    if sset.num_classes != dataset.num_classes:
        raise FedcondError(f"synthetic set has {sset.num_classes} classes but {dataset.name} has {dataset.num_classes}")


def kd_temperature(sset: SyntheticSet, config: EvalConfig) -> float:
    """The distillation temperature to train on ``sset`` with: the config's, else the set's, else 1."""
    if config.kd_temperature is not None:
        return float(config.kd_temperature)
    value = sset.config.get("kd_temperature")
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise FedcondError(f"the set's kd_temperature must be a number > 0, got {value!r}")
    return float(value)


def evaluate_synthetic(
    sset: SyntheticSet,
    dataset: ImageDataset,
    config: EvalConfig | None = None,
    runs: int = 5,
    seed: int = 0,
    on_run: Callable[[int, float], None] | None = None,
) -> EvalResult:
    """Train ``runs`` fresh models on ``sset`` and test each on ``dataset``'s test split.

    Soft labels are learnt at :func:`kd_temperature`; the result's config records the
    temperature used.
    """
    config = resolved(config or EvalConfig(), dataset)
    check_compatible(sset, dataset)
    if sset.soft_labels:
        config = replace(config, kd_temperature=kd_temperature(sset, config))
    zca = zca_regularization(sset.config)
    if zca is not None:  # the set lives in ZCA-whitened space: test in the same space
        dataset = zca_dataset(dataset, zca)
    trained_on = sset.decoded()  # multi-formation mosaics: one training image per tile
    x = trained_on.images.to(dataset.device, torch.float32)
    y = trained_on.labels.to(dataset.device)
    accs = []
    for r in range(runs):
        accs.append(_train_and_test(dataset, x, y, config, seed + r))
        if on_run is not None:
            on_run(r, accs[-1])
    extra = {"method": sset.method, "ipc": sset.ipc, **({"factor": sset.factor} if sset.factor > 1 else {})}
    return EvalResult(accs, config, "synthetic", sset.num_images, extra)


def architecture_names(models: Sequence[str]) -> list[str]:
    """Normalised model names, each known and listed once; a FedcondError otherwise."""
    names = [m.strip().lower() for m in models]
    if not names or any(not m for m in names):
        raise FedcondError(f"empty model name in {','.join(models)!r}: list networks like convnet,mlp,resnet18")
    if len(set(names)) != len(names):
        raise FedcondError(f"a model is listed twice in {','.join(names)}")
    unknown = [m for m in names if m not in MODEL_NAMES]
    if unknown:
        raise FedcondError(f"unknown model {unknown[0]!r}: use one of {', '.join(MODEL_NAMES)}")
    return names


def evaluate_architectures(
    sset: SyntheticSet,
    dataset: ImageDataset,
    models: Sequence[str],
    config: EvalConfig | None = None,
    runs: int = 5,
    seed: int = 0,
    on_run: Callable[[str, int, float], None] | None = None,
) -> list[EvalResult]:
    """Cross-architecture generalisation: :func:`evaluate_synthetic` once per network.

    Every model gets the same protocol (``config`` with its ``model`` replaced) and the same
    seeds, so the rows of the resulting table differ only in the architecture.

    Args:
        models: registry names (see :data:`fedcond.models.MODEL_NAMES`), each at most once.
        on_run: called with (model name, run index, accuracy) after each training.
    """
    config = resolved(config or EvalConfig(), dataset)
    configs = [replace(config, model=m) for m in architecture_names(models)]
    results = []
    for cfg in configs:
        hook = None if on_run is None else (lambda r, acc, name=cfg.model: on_run(name, r, acc))
        results.append(evaluate_synthetic(sset, dataset, cfg, runs, seed, on_run=hook))
    return results


def evaluate_full(
    dataset: ImageDataset,
    config: EvalConfig | None = None,
    runs: int = 1,
    seed: int = 0,
    on_run: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> EvalResult:
    """Upper bound: the same protocol on the whole real training split."""
    config = resolved(config or EvalConfig(epochs=20), dataset)
    accs = []
    for r in range(runs):
        accs.append(_train_and_test(dataset, dataset.train_images, dataset.train_labels, config, seed + r, on_epoch))
        if on_run is not None:
            on_run(r, accs[-1])
    return EvalResult(accs, config, "full", int(dataset.train_images.shape[0]))


def random_subset_indices(dataset: ImageDataset, ipc: int, generator: torch.Generator) -> torch.Tensor:
    """``ipc`` distinct random training indices per class (fewer where a class has fewer)."""
    chosen = []
    for idx in dataset.class_indices():
        perm = torch.randperm(idx.numel(), generator=generator)[:ipc]
        chosen.append(idx[perm.to(idx.device)])
    return torch.cat(chosen)


def evaluate_random(
    dataset: ImageDataset,
    ipc: int,
    config: EvalConfig | None = None,
    runs: int = 5,
    seed: int = 0,
    on_run: Callable[[int, float], None] | None = None,
) -> EvalResult:
    """Lower bound: a different random real subset of ``ipc`` images per class for each run."""
    config = resolved(config or EvalConfig(), dataset)
    accs = []
    for r in range(runs):
        idx = random_subset_indices(dataset, ipc, torch.Generator().manual_seed(seed + r))
        accs.append(_train_and_test(dataset, dataset.train_images[idx], dataset.train_labels[idx], config, seed + r))
        if on_run is not None:
            on_run(r, accs[-1])
    return EvalResult(accs, config, "random", int(idx.numel()), {"method": "random-real", "ipc": ipc})
