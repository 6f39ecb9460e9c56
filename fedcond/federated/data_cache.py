"""One loaded copy of a data set per process, shared by every client and the server there.

In simulation a Ray actor (or the in-process server thread) serves many clients; loading
MNIST or CIFAR-10 for each message would dominate the run, so loads are memoised by
(name, data_dir, normalize). The tensors are never modified in place, so sharing is safe.
"""

from __future__ import annotations

import functools

from fedcond.data import ImageDataset, load_dataset


@functools.lru_cache(maxsize=4)
def get_dataset(name: str, data_dir: str = "", normalize: str = "") -> ImageDataset:
    """``load_dataset(name, data_dir or None, normalize=normalize or None)`` on the CPU, memoised per process."""
    return load_dataset(name, data_dir=data_dir or None, device="cpu", normalize=normalize or None)
