"""Datasets as tensors: one ``ImageDataset`` per data set, loaded by name.

Every loader returns the same thing: normalised float32 train/test images (N, C, H, W),
int64 labels, class names and the normalisation used, so the rest of fedcond never sees
PIL images or per-sample transforms. Distillation touches every real image many times,
so tensors resident on the device beat a DataLoader here.

Sources:
- ``digits``: scikit-learn's bundled 8x8 digits, fixed stratified split; works offline.
- ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, ``svhn``: torchvision; they
  download into ``~/.cache/fedcond`` when online, or are read from ``data_dir`` (a local
  mirror) without downloading.
- a path to an ImageFolder tree or a ``.tar.gz`` of one (``train/<class>/*``,
  ``test/<class>/*``); decoded once and cached as tensors.

Normalisation (``normalize``): by default the torchvision data sets use the literature's
fixed constants, while digits and ImageFolder data use the mean and std of their own
training images. Those statistics are private: they depend on every training image, so a
DP method must not use them (DP-DM refuses them). ``normalize="public"`` gives fixed
constants (digits: 0.5/0.5, chosen without looking at the data), ``"MEAN:STD"`` the
caller's own, ``"train"`` the training split's statistics; ``ImageDataset.normalization``
records which kind a data set has.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedcond.errors import FedcondError

TORCHVISION_DATASETS = ("mnist", "fashion-mnist", "cifar10", "cifar100", "svhn")
DATASET_NAMES = ("digits",) + TORCHVISION_DATASETS
# Where a data set's normalisation constants came from (ImageDataset.normalization):
PUBLIC, GIVEN, TRAIN = "public", "given", "train"  # fixed constants / the caller's / the training images'
Normalize = str | tuple[tuple[float, ...], tuple[float, ...]] | None


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image data set held as normalised tensors.

    Attributes:
        name: short name (``digits``, ``mnist``, ... or the folder's name).
        train_images, test_images: float32 (N, C, H, W), already normalised.
        train_labels, test_labels: int64 (N,) class ids in ``[0, num_classes)``.
        classes: class names, index = class id.
        mean, std: per-channel normalisation applied to the raw [0, 1] pixels.
        normalization: where ``mean``/``std`` came from: ``"public"`` (fixed constants of a
            known data set), ``"given"`` (chosen by the caller) or ``"train"`` (computed from
            the training images: private, see the module docstring).
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization: str = GIVEN

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width)."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    def to(self, device: str | torch.device) -> "ImageDataset":
        """The same data set with its tensors on ``device`` (moved once, then resident)."""
        return replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device),
            test_labels=self.test_labels.to(device),
        )

    def class_indices(self) -> list[torch.Tensor]:
        """For each class, the indices of its training images."""
        return [torch.nonzero(self.train_labels == c).flatten() for c in range(self.num_classes)]

    def subset(self, indices: torch.Tensor, name: str | None = None) -> "ImageDataset":
        """A data set whose training split is ``train[indices]`` (test split unchanged)."""
        indices = torch.as_tensor(indices, dtype=torch.long, device=self.train_labels.device)
        return replace(
            self,
            name=name or self.name,
            train_images=self.train_images[indices],
            train_labels=self.train_labels[indices],
        )

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map normalised images back to [0, 1] pixel space (for plots)."""
        return denormalize(images, self.mean, self.std)


def denormalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Undo per-channel normalisation: ``x * std + mean``."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return images * s + m


def default_cache_dir() -> Path:
    """Where downloads and decoded caches go: ``$FEDCOND_CACHE`` or ``~/.cache/fedcond``."""
    return Path(os.environ.get("FEDCOND_CACHE", Path.home() / ".cache" / "fedcond"))


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    download: bool | None = None,
    normalize: Normalize = None,
) -> ImageDataset:
    """Load a data set by name (or ImageFolder path) as an :class:`ImageDataset`.

    Args:
        name: one of :data:`DATASET_NAMES`, or a path to an ImageFolder tree / ``.tar.gz``.
        data_dir: a local mirror to read from. When given, nothing is downloaded.
        device: where the tensors live.
        download: force downloading on/off; default: download only when ``data_dir`` is None.
        normalize: None or ``""`` (the data set's default), ``"public"`` (fixed constants),
            ``"train"`` (the training images' statistics), ``"MEAN:STD"`` (per-channel
            comma lists, e.g. ``"0.5,0.5,0.5:0.25,0.25,0.25"``) or a (mean, std) pair.

    Raises:
        FedcondError: unknown name, or the data is missing/corrupt (the message says where
            fedcond looked and how to fix it), or ``normalize`` is malformed or has no
            public constants for this data set.
    """
    # Given constants fix an ImageFolder's channel count (one per value), not its images: the
    # automatic greyscale collapse depends on every image, which a DP run must not let it do.
    dataset = _load(name, data_dir, download, _given_channels(normalize))
    return renormalized(dataset, normalize).to(device)


def _given_channels(normalize: Normalize) -> int | None:
    """The channel count ``MEAN:STD`` (or a (mean, std) pair) names, else None."""
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        return len(normalize[0])
    if isinstance(normalize, str) and normalize.count(":") == 1:
        return len(normalize.split(":")[0].split(","))
    return None


def _load(name: str, data_dir: str | os.PathLike | None, download: bool | None,
          channels: int | None = None) -> ImageDataset:
    """The data set with its default normalisation."""
    key = name.lower().replace("_", "-")
    if key == "digits":
        dataset = _load_digits()
    elif key in TORCHVISION_DATASETS:
        root = Path(data_dir) if data_dir is not None else default_cache_dir() / "torchvision"
        if download is None:
            download = data_dir is None
        dataset = _load_torchvision(key, root, download)
    elif Path(name).exists():
        dataset = _load_image_folder(Path(name), channels)
    else:
        raise FedcondError(
            f"unknown dataset {name!r}: use one of {', '.join(DATASET_NAMES)} "
            "or a path to an ImageFolder tree / .tar.gz (train/<class>/*, test/<class>/*)"
        )
    return dataset


# Fixed constants for data sets whose default statistics come from their training images:
# chosen without looking at the data (pixels in [0, 1] to [-1, 1]).
_PUBLIC_STATS = {"digits": ((0.5,), (0.5,))}


def renormalized(dataset: ImageDataset, normalize: Normalize) -> ImageDataset:
    """``dataset`` under the normalisation ``normalize`` asks for (see :func:`load_dataset`);
    itself, unchanged, for the default or when the constants are already the asked ones."""
    if normalize is None or normalize == "":
        return dataset
    if normalize == TRAIN:
        if dataset.normalization == TRAIN:
            return dataset
        raw = dataset.denormalize(dataset.train_images)
        mean = tuple(float(v) for v in raw.mean(dim=(0, 2, 3)))
        std = tuple(float(v) for v in raw.std(dim=(0, 2, 3)).clamp_min(1e-6))
        kind = TRAIN
    elif normalize == PUBLIC:
        if dataset.normalization == PUBLIC:
            return dataset
        if dataset.name not in _PUBLIC_STATS:
            raise FedcondError(
                f"no public normalisation constants are known for {dataset.name!r}: give them with "
                "--normalize MEAN:STD (per channel, e.g. 0.5,0.5,0.5:0.25,0.25,0.25)"
            )
        (mean, std), kind = _PUBLIC_STATS[dataset.name], PUBLIC
    else:
        mean, std = _parse_constants(normalize, dataset.channels)
        kind = GIVEN
    if tuple(mean) == tuple(dataset.mean) and tuple(std) == tuple(dataset.std):
        return dataset  # the same constants: keep the record of where they came from
    raw_tr, raw_te = dataset.denormalize(dataset.train_images), dataset.denormalize(dataset.test_images)
    out = _normalised(dataset.name, raw_tr.cpu().numpy(), dataset.train_labels.cpu().numpy(), raw_te.cpu().numpy(),
                      dataset.test_labels.cpu().numpy(), dataset.classes, tuple(mean), tuple(std))
    return replace(out, normalization=kind).to(dataset.device)


def under_normalization(dataset: ImageDataset, mean: tuple[float, ...], std: tuple[float, ...]) -> ImageDataset:
    """``dataset`` under a synthetic set's constants, so that the set's images and the data's
    mean the same pixels (a DP set on digits uses public constants, the data's default
    does not). Unchanged when they already agree, or when the channel counts differ (the
    caller's compatibility check reports that)."""
    if len(mean) != dataset.channels or len(std) != dataset.channels:
        return dataset
    return renormalized(dataset, (tuple(mean), tuple(std)))


def _parse_constants(normalize: Normalize, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from ``"M1,M2:S1,S2"`` or a pair of sequences; one value per channel."""
    if isinstance(normalize, str):
        mean_text, sep, std_text = normalize.partition(":")
        try:
            if not sep:
                raise ValueError
            mean = tuple(float(v) for v in mean_text.split(","))
            std = tuple(float(v) for v in std_text.split(","))
        except ValueError:
            raise FedcondError(f"--normalize must be public, train or MEAN:STD (comma lists per channel, e.g. "
                               f"0.5:0.5), got {normalize!r}") from None
    else:
        mean, std = (tuple(float(v) for v in part) for part in normalize)  # type: ignore[union-attr]
    if len(mean) != channels or len(std) != channels or any(not s > 0 for s in std):
        raise FedcondError(f"--normalize needs {channels} mean and {channels} std value(s) (std > 0), "
                           f"got {len(mean)} and {len(std)}")
    return mean, std


def _normalised(
    name: str,
    train: np.ndarray,
    train_y: np.ndarray,
    test: np.ndarray,
    test_y: np.ndarray,
    classes: tuple[str, ...],
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ImageDataset:
    """Build an ImageDataset from [0, 1] float arrays (N, C, H, W); mean/std from train if None."""
    tr = torch.as_tensor(train, dtype=torch.float32)
    te = torch.as_tensor(test, dtype=torch.float32)
    kind = GIVEN
    if mean is None or std is None:
        mean = tuple(float(v) for v in tr.mean(dim=(0, 2, 3)))
        std = tuple(float(v) for v in tr.std(dim=(0, 2, 3)).clamp_min(1e-6))
        kind = TRAIN
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ImageDataset(
        name=name,
        train_images=((tr - m) / s).contiguous(),
        train_labels=torch.as_tensor(train_y, dtype=torch.int64),
        test_images=((te - m) / s).contiguous(),
        test_labels=torch.as_tensor(test_y, dtype=torch.int64),
        classes=classes,
        mean=mean,
        std=std,
        normalization=kind,
    )


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits  # noqa: PLC0415  (only this loader needs it)
    from sklearn.model_selection import train_test_split  # noqa: PLC0415  (only this loader needs it)

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8), [0, 1]
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    return _normalised("digits", x_tr, y_tr, x_te, y_te, tuple(str(i) for i in range(10)))


# Standard normalisation constants used across the distillation literature.
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2861,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def _missing(name: str, root: Path, download: bool, err: Exception) -> FedcondError:
    if download:
        hint = "check the network connection, or pass --data-dir with a local copy"
    else:
        hint = f"put torchvision's files for {name} under {root} (or drop --data-dir to download)"
    return FedcondError(f"could not load {name} from {root}: {err}; {hint}")


def _load_torchvision(name: str, root: Path, download: bool) -> ImageDataset:
    from torchvision import datasets as tvd  # noqa: PLC0415  (only this loader needs it)

    # A mirror may hold an ImageFolder copy instead of torchvision's files (e.g. a JPEG CIFAR-10).
    if not download:
        folder = _find_folder_copy(name, root)
        if folder is not None:
            ds = _load_image_folder(folder)
            mean, std = _STATS[name]
            return replace(_renormalised(ds, name, mean, std), normalization=PUBLIC)
        if name in ("mnist", "fashion-mnist"):
            root = _unpacked_idx_root(name, root)
    try:
        if name in ("mnist", "fashion-mnist"):
            cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
            tr, te = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
            x_tr, x_te = tr.data.numpy()[:, None] / 255.0, te.data.numpy()[:, None] / 255.0
            y_tr, y_te, classes = tr.targets.numpy(), te.targets.numpy(), tuple(tr.classes)
        elif name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            tr, te = cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)
            x_tr = tr.data.transpose(0, 3, 1, 2) / 255.0
            x_te = te.data.transpose(0, 3, 1, 2) / 255.0
            y_tr, y_te, classes = np.array(tr.targets), np.array(te.targets), tuple(tr.classes)
        else:  # svhn
            tr = tvd.SVHN(str(root), split="train", download=download)
            te = tvd.SVHN(str(root), split="test", download=download)
            x_tr, x_te = tr.data / 255.0, te.data / 255.0
            y_tr, y_te, classes = tr.labels, te.labels, tuple(str(i) for i in range(10))
    except FedcondError:
        raise
    except Exception as err:  # noqa: BLE001  (torchvision raises RuntimeError/URLError/OSError variously)
        raise _missing(name, root, download, err) from None
    mean, std = _STATS[name]
    return replace(_normalised(name, x_tr, y_tr, x_te, y_te, classes, mean, std), normalization=PUBLIC)


def _unpacked_idx_root(name: str, root: Path) -> Path:
    """torchvision's MNIST reads uncompressed IDX files; a mirror may hold only ``.gz``.

    If so, unpack them once into the (writable) cache and read from there.
    """
    folder = "MNIST" if name == "mnist" else "FashionMNIST"
    raw = root / folder / "raw"
    gz = sorted(raw.glob("*-ubyte.gz")) if raw.is_dir() else []
    if not gz or all((raw / p.stem).exists() for p in gz):
        return root
    digest = hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]
    cache_root = default_cache_dir() / "unpacked" / digest
    out = cache_root / folder / "raw"
    out.mkdir(parents=True, exist_ok=True)
    for p in gz:
        target = out / p.stem
        if not target.exists():
            try:
                # a per-process temporary name: two processes may unpack the same copy at once
                tmp = f"{target}.{os.getpid()}.tmp"
                with gzip.open(p, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as err:
                raise FedcondError(f"corrupt archive {p}: {err}; replace it with a good copy") from None
            os.replace(tmp, target)
    return cache_root


def _find_folder_copy(name: str, root: Path) -> Path | None:
    """An ImageFolder tree or tarball for ``name`` inside ``root``, if the mirror has one."""
    if not root.is_dir():
        return None
    stem = name.replace("-", "")
    for p in sorted(root.iterdir()):
        base = p.name.lower().replace("-", "").replace("_", "")
        if base.startswith(stem) and not base.startswith(stem + "0"):  # cifar10 vs cifar100
            if p.name.endswith((".tar.gz", ".tgz")) or (p.is_dir() and (p / "train").is_dir()):
                return p
    return None


def _renormalised(ds: ImageDataset, name: str, mean: tuple[float, ...], std: tuple[float, ...]) -> ImageDataset:
    raw_tr, raw_te = ds.denormalize(ds.train_images), ds.denormalize(ds.test_images)
    return _normalised(
        name, raw_tr.numpy(), ds.train_labels.numpy(), raw_te.numpy(), ds.test_labels.numpy(),
        ds.classes, mean, std,
    )


def _load_image_folder(path: Path, channels: int | None = None) -> ImageDataset:
    """Read ``train/<class>/*`` and ``test/<class>/*`` (a folder or a .tar.gz of one), with
    ``channels`` channels (1: greyscale, 3: RGB) or, when None, 1 if every image is grey."""
    if channels not in (None, 1, 3):
        raise FedcondError(f"an ImageFolder has 1 or 3 channels; --normalize gives {channels} values")
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = default_cache_dir() / "folders" / f"{digest}{f'-{channels}ch' if channels else ''}.npz"
    name = path.name.split(".")[0]
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            classes = tuple(str(c) for c in z["classes"])
            return _normalised(name, z["x_tr"], z["y_tr"], z["x_te"], z["y_te"], classes)
    tree = path
    if path.is_file():
        tree = default_cache_dir() / "folders" / digest
        if not (tree / ".complete").exists():
            try:
                with tarfile.open(path, "r:gz") as tar:
                    tar.extractall(tree, filter="data")
            except (tarfile.TarError, OSError, EOFError) as err:
                raise FedcondError(f"cannot read archive {path}: {err}; check the file is a complete .tar.gz") from None
            (tree / ".complete").touch()
        # Tolerate one wrapping folder inside the archive.
        subdirs = [d for d in tree.iterdir() if d.is_dir()]
        if not (tree / "train").is_dir() and len(subdirs) == 1:
            tree = subdirs[0]
    if not (tree / "train").is_dir() or not (tree / "test").is_dir():
        raise FedcondError(f"{path} is not an ImageFolder tree: expected train/<class>/* and test/<class>/*")
    x_tr, y_tr, classes = _read_split(tree / "train", None, channels)
    x_te, y_te, _ = _read_split(tree / "test", classes, channels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # a per-process temporary name: two runs started together both build the cache (last one wins)
    tmp = f"{cache}.{os.getpid()}.tmp.npz"
    np.savez(tmp, x_tr=x_tr, y_tr=y_tr, x_te=x_te, y_te=y_te, classes=np.array(classes))
    os.replace(tmp, cache)
    return _normalised(name, x_tr, y_tr, x_te, y_te, classes)


def _read_split(split: Path, classes: tuple[str, ...] | None,
                channels: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image  # noqa: PLC0415  (only this loader needs it)

    found = tuple(sorted(d.name for d in split.iterdir() if d.is_dir()))
    if classes is not None and found != classes:
        raise FedcondError(f"{split} has classes {found}, but train has {classes}")
    images, labels = [], []
    for label, cls in enumerate(found):
        for f in sorted((split / cls).iterdir()):
            try:
                with Image.open(f) as im:
                    images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
            except OSError as err:
                raise FedcondError(f"cannot read image {f}: {err}") from None
            labels.append(label)
    if not images:
        raise FedcondError(f"no images under {split}")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise FedcondError(f"images under {split} differ in size ({sorted(shapes)[:3]}...); resize them first")
    # Contiguous, so statistics reduce in the same order whether decoded now or read from cache.
    x = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    if channels == 1 or (channels is None and np.allclose(x[:, 0], x[:, 1]) and np.allclose(x[:, 1], x[:, 2])):
        # grayscale stored as RGB (None: found so in every image); asked for 1: ITU-R 601 luma, as PIL's "L"
        x = np.ascontiguousarray(x[:, :1] if channels is None else
                                 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3], dtype=np.float32)
    return x, np.array(labels, dtype=np.int64), found
