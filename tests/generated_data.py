"""Tiny MNIST, CIFAR-10, AG News and SST-2 files in the datasets' real on-disk formats, for
offline tests."""

from __future__ import annotations

import csv
import pickle
import struct
import zipfile
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


# words that decide the class of a generated text, one list per class
TOPIC_WORDS = [["election", "vote"], ["match", "goal"], ["market", "shares"], ["genome", "lab"]]


def _topic_text(label: int, i: int) -> tuple[str, str]:
    """A (title, description) pair whose topic words give away `label`; as in the published
    files, a line break is written as backslash-n and some words are joined by a backslash."""
    word = TOPIC_WORDS[label][i % 2]
    return f"The {word} today", f'Reports say the {word}, "quoted",\\nwas a big\\deal #{i}'


def write_ag_news(folder: Path, n_train: int = 80, n_test: int = 20) -> Path:
    """Write AG News' train.csv and test.csv: "class index","title","description", 1-4."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", n_train), ("test.csv", n_test)):
        with open(folder / name, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n")
            for i in range(n):
                writer.writerow([str(i % 4 + 1), *_topic_text(i % 4, i)])
    return folder


def write_sst2(folder: Path, n_train: int = 60, n_dev: int = 16) -> Path:
    """Write GLUE's SST-2.zip holding SST-2/{train,dev,test}.tsv ("sentence<TAB>label")."""
    folder.mkdir(parents=True, exist_ok=True)
    words = {0: ["dull", "awful"], 1: ["moving", "great"]}

    def rows(n: int) -> str:
        lines = [f"a {words[i % 2][i // 2 % 2]} film , really {i} \t{i % 2}" for i in range(n)]
        return "sentence\tlabel\n" + "\n".join(line.replace(" \t", "\t") for line in lines)

    with zipfile.ZipFile(folder / "SST-2.zip", "w") as zf:
        zf.writestr("SST-2/train.tsv", rows(n_train) + "\n")
        zf.writestr("SST-2/dev.tsv", rows(n_dev) + "\n")
        zf.writestr("SST-2/test.tsv", "index\tsentence\n0\ta film\n")
    return folder / "SST-2.zip"
