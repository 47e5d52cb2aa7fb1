"""Tiny MNIST and CIFAR-10 folders in the datasets' real on-disk formats, for offline tests."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def write_mnist(folder: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Write MNIST's four IDX files (unpacked: the .gz forms must match the published MD5s)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
            with open(folder / f"{split}-{kind}-ubyte", "wb") as f:
                f.write(header + array.tobytes())
    return folder


def write_cifar10(folder: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """Write cifar-10-batches-py/ (5 train batches, test_batch, batches.meta) under `folder`."""
    rng = np.random.default_rng(seed)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [i % 10 for i in range(per_batch)]}
        with open(batches / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)]}
    with open(batches / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder
