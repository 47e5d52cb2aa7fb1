"""MNIST: 70k grey 28x28 handwritten digits, fetched once from the canonical mirrors."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

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

MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
# The four files as published, with the MD5 of each .gz.
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped or raw) with `ndim` dimensions."""
    name = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(
                f"{name} is not a valid gzip file ({exc}): delete it and download it again"
            ) from exc
    header = 4 + 4 * ndim
    if len(raw) < 4:
        raise ConfigError(f"{name} is truncated ({len(raw)} bytes): delete it and fetch it again")
    zeros, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zeros != 0 or dtype != 0x08 or dims != ndim:
        raise ConfigError(
            f"{name} has magic number 0x{int.from_bytes(raw[:4], 'big'):08x}, expected "
            f"0x{0x0800 + ndim:08x} (IDX, unsigned bytes, {ndim} dimensions): it is not an "
            "MNIST file of this kind, or it is corrupt; delete it and fetch it again"
        )
    if len(raw) < header:
        raise ConfigError(f"{name} is truncated ({len(raw)} bytes): delete it and fetch it again")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise ConfigError(
            f"{name} declares shape {shape} ({int(np.prod(shape))} bytes of data) but holds "
            f"{len(raw) - header}: the file is corrupt; delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def load_split(
    images_path: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one MNIST split: uint8 images (N, 1, 28, 28) and int64 labels (N,)."""
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise ConfigError(
            f"{images_path} holds images of {images.shape[1]}x{images.shape[2]} pixels: "
            "MNIST images are 28x28; delete the file and fetch it again"
        )
    if len(images) != len(labels):
        raise ConfigError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels: "
            "the two files do not belong together; delete them and fetch them again"
        )
    if labels.size and labels.max() > 9:
        raise ConfigError(f"{labels_path} holds label {labels.max()}: MNIST labels are 0..9")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


class MNISTDataModule(DownloadedDataModule):
    """MNIST from `data_dir`, downloaded there (MD5-checked) when missing and `download` is on.

    `data_dir` holds the four published files, gzipped (`train-images-idx3-ubyte.gz`, ...) or
    unpacked (`train-images-idx3-ubyte`, ...). Batches are uint8 (N, 1, 28, 28) until
    `normalize` turns them into floats; with `normalize=None` they are only scaled to [0, 1].
    The 60k training images are split into train/val by `val_fraction` and `seed`.
    """

    num_classes = 10
    input_shape = (1, 28, 28)

    def _local(self, gz_name: str) -> Path | None:
        """The file for `gz_name` in data_dir (gzipped or unpacked), or None."""
        for path in (self.data_dir / gz_name, self.data_dir / gz_name.removesuffix(".gz")):
            if path.is_file():
                return path
        return None

    def _verify(self, path: Path) -> None:
        """Check a gzipped file against its published MD5 (unpacked files have none to check)."""
        if path.suffix != ".gz":
            return
        actual = md5_of(path)
        if actual != MD5[path.name]:
            raise ConfigError(
                f"{path} has MD5 {actual}, not the published {MD5[path.name]}: it is not the "
                "original MNIST file or it is damaged; delete it and run again to download it"
            )

    def _missing_error(self, missing: list[str], reason: str) -> ConfigError:
        files = ", ".join(f"{name} (MD5 {md5})" for name, md5 in MD5.items())
        return ConfigError(
            f"MNIST is missing from {self.data_dir} ({', '.join(missing)}) and {reason}. "
            f"To stage it by hand, put these four files in that directory: {files} (gzipped, "
            "or unpacked without the .gz suffix). They are published at "
            f"{' and '.join(MIRRORS)}; or set data.data_dir to a directory that has them, or "
            "set data.download=true on a machine with network access."
        )

    @override
    def prepare_data(self) -> None:
        """Download the files that are missing from `data_dir` (rank zero only, under DDP)."""
        self._files()

    def _files(self) -> dict[str, Path]:
        """Return the path of each of the four files, downloading missing ones if allowed."""
        missing = [name for name in MD5 if self._local(name) is None]
        if missing and not self.download:
            raise self._missing_error(missing, "data.download is false")
        for name in missing:
            try:
                download([m + name for m in MIRRORS], self.data_dir / name, MD5[name])
            except DownloadError as exc:
                raise self._missing_error(missing, f"downloading failed: {exc}") from exc
        files = {name: self._local(name) for name in MD5}
        for path in files.values():
            self._verify(path)
        return files  # type: ignore[return-value]

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        files = self._files()
        x, y = load_split(files["train-images-idx3-ubyte.gz"], files["train-labels-idx1-ubyte.gz"])
        x_test, y_test = load_split(
            files["t10k-images-idx3-ubyte.gz"], files["t10k-labels-idx1-ubyte.gz"]
        )
        train, val = split_train_val(x, y, self.val_fraction, self.seed)
        log.info(f"MNIST: {len(train)} train, {len(val)} val, {len(y_test)} test images")
        return train, val, TensorDataset(x_test, y_test)
