"""A fingerprint of private training data that reveals nothing to a reader of the outputs.

A resumed DP run must continue on the same data it started on: the checkpoint records a
fingerprint of the training images and labels, and a resume on other data is refused. A
plain hash would not do: it is a deterministic function of the data, so anyone who knows
all but one training example could test candidates for the last one against it, which is
exactly the attacker DP is defined against. The fingerprint is therefore keyed BLAKE2b
(a MAC): without the key it is indistinguishable from random bytes. The key is 256 random
bits made once per user and kept beside the data, not beside the outputs:
``$FEDCOND_CACHE/secret/fingerprint.key`` (default ``~/.cache/fedcond``), readable only by
its owner. A checkpoint moved to another machine therefore cannot be verified there, and
the message says so.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import torch

from fedcond.data import ImageDataset, default_cache_dir

KEY_BYTES = 32


def key_path() -> Path:
    """Where the fingerprint key lives (created on first use)."""
    return default_cache_dir() / "secret" / "fingerprint.key"


def _key() -> bytes:
    path = key_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
        try:
            os.link(tmp, path)  # first writer wins: two runs starting at once agree on one key
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} is not a fingerprint key ({len(key)} bytes): delete it to make a new one")
    return key


def data_fingerprint(dataset: ImageDataset) -> str:
    """Keyed BLAKE2b of ``dataset``'s training images and labels (hex; see the module docstring)."""
    mac = hashlib.blake2b(key=_key(), digest_size=16)
    images = dataset.train_images.detach().to("cpu", torch.float32).contiguous()
    labels = dataset.train_labels.detach().to("cpu", torch.int64).contiguous()
    mac.update(repr((tuple(images.shape), tuple(dataset.classes))).encode())
    mac.update(images.numpy().tobytes())
    mac.update(labels.numpy().tobytes())
    return mac.hexdigest()
