"""CIFAR-10: 60k colour 32x32 images in 10 classes, fetched once from the authors' site."""

from __future__ import annotations

import codecs
import functools
import io
import os
import pickle
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset
from typing_extensions import override

from slimlab.data.base import DownloadedDataModule
from slimlab.data.download import DownloadError, download, md5_of
from slimlab.data.split import split_train_val
from slimlab.utils.errors import ConfigError
from slimlab.utils.logging import get_logger

log = get_logger(__name__)

URLS = ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR-10 batch pickle may name, mapped to what they resolve to."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 1.26 has no numpy._core
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray}
    allowed[("numpy", "dtype")] = np.dtype
    # Python 2 (the published files) and numpy < 2 write numpy.core; numpy 2 writes numpy._core.
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # pickle protocol 5
    # Python 3 pickles of bytes at protocol < 3 call _codecs.encode(text, "latin1"): pure data.
    allowed[("_codecs", "encode")] = codecs.encode
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers and numpy arrays and refuses any other global."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed in a CIFAR-10 batch (only numpy arrays "
                "and plain containers are): the file is not a CIFAR-10 batch, or it is malicious"
            )
        return allowed[(module, name)]


def load_batch(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one python-pickle batch: uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        batch = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from a bad file
        raise ConfigError(
            f"{path} could not be read as a CIFAR-10 batch ({exc}): delete the folder "
            f"{FOLDER} and run again to unpack it from the original archive"
        ) from exc
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise ConfigError(
            f"{path} is not a CIFAR-10 batch: expected a dict with b'data', a uint8 array of "
            "shape (N, 3072), and b'labels', a list of N ints"
        )
    if data.shape[1] != 3 * 32 * 32 or labels is None or len(labels) != len(data):
        raise ConfigError(
            f"{path} holds data of shape {data.shape} and "
            f"{'no' if labels is None else len(labels)} labels: a CIFAR-10 batch holds "
            "(N, 3072) uint8 pixels and N labels"
        )
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise ConfigError(f"{path} holds labels outside 0..9 ({y.min()}..{y.max()})")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, y


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    parts = PurePosixPath(member.name).parts
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name) or ".." in parts:
        raise ConfigError(
            f"{archive} contains the member {member.name!r}, which points outside the folder it "
            "unpacks into: refusing to extract it; delete the archive and download it again"
        )
    if not (member.isfile() or member.isdir()):
        raise ConfigError(
            f"{archive} contains {member.name!r}, which is a link or device file: CIFAR-10 holds "
            "only plain files; delete the archive and download it again"
        )


def extract(archive: Path, dest_dir: Path) -> None:
    """Unpack `archive` into `dest_dir/cifar-10-batches-py`, all at once or not at all."""
    with tempfile.TemporaryDirectory(prefix=".cifar10-", dir=dest_dir) as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(archive, member)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # Python without extraction filters: the checks above stand in
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise ConfigError(
                f"{archive} is not a readable .tar.gz ({exc}): delete it and download it again"
            ) from exc
        unpacked = Path(tmp) / FOLDER
        if not unpacked.is_dir():
            raise ConfigError(f"{archive} has no {FOLDER}/ folder: it is not the CIFAR-10 archive")
        try:
            os.replace(unpacked, dest_dir / FOLDER)
        except OSError:
            if _missing_batches(dest_dir / FOLDER):  # not another process that finished first
                raise


def _missing_batches(folder: Path) -> list[str]:
    return [name for name in [*TRAIN_BATCHES, TEST_BATCH] if not (folder / name).is_file()]


class CIFAR10DataModule(DownloadedDataModule):
    """CIFAR-10 from `data_dir`, downloaded (MD5-checked) and unpacked there when missing.

    `data_dir` holds `cifar-10-python.tar.gz` and/or its unpacked `cifar-10-batches-py/`.
    Batches are uint8 (N, 3, 32, 32) until `normalize` turns them into floats; with
    `normalize=None` they are only scaled to [0, 1]. The 50k training images are split into
    train/val by `val_fraction` and `seed`; the 10k test batch is the test set.
    """

    num_classes = 10
    input_shape = (3, 32, 32)

    def _missing_error(self, reason: str) -> ConfigError:
        return ConfigError(
            f"CIFAR-10 is missing from {self.data_dir} and {reason}. To stage it by hand, put "
            f"{ARCHIVE} (MD5 {ARCHIVE_MD5}, from {URLS[0]}) in that directory, or the folder "
            f"{FOLDER}/ unpacked from it, holding {', '.join(TRAIN_BATCHES)} and {TEST_BATCH}; "
            "or set data.data_dir to a directory that has them, or set data.download=true on a "
            "machine with network access."
        )

    @override
    def prepare_data(self) -> None:
        """Download and unpack the archive if the batches are missing (rank zero, under DDP)."""
        self._folder()

    def _folder(self) -> Path:
        """Return the unpacked batches folder, downloading and unpacking it if allowed."""
        folder = self.data_dir / FOLDER
        missing = _missing_batches(folder)
        if not missing:
            return folder
        if folder.exists():
            raise ConfigError(
                f"{folder} lacks {', '.join(missing)}: delete the folder and run again to "
                f"unpack it from {ARCHIVE}"
            )
        archive = self.data_dir / ARCHIVE
        if not archive.is_file():
            if not self.download:
                raise self._missing_error("data.download is false")
            try:
                download(URLS, archive, ARCHIVE_MD5)
            except DownloadError as exc:
                raise self._missing_error(f"downloading failed: {exc}") from exc
        actual = md5_of(archive)
        if actual != ARCHIVE_MD5:
            raise ConfigError(
                f"{archive} has MD5 {actual}, not the published {ARCHIVE_MD5}: it is not the "
                "original CIFAR-10 archive or it is damaged; delete it and run again to fetch it"
            )
        log.info(f"Unpacking {archive}")
        extract(archive, self.data_dir)
        return folder

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        folder = self._folder()
        parts = [load_batch(folder / name) for name in TRAIN_BATCHES]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        x_test, y_test = load_batch(folder / TEST_BATCH)
        train, val = split_train_val(x, y, self.val_fraction, self.seed)
        log.info(f"CIFAR-10: {len(train)} train, {len(val)} val, {len(y_test)} test images")
        return train, val, TensorDataset(x_test, y_test)
