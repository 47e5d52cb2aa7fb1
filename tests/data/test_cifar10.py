"""CIFAR-10: safe unpickling and unpacking, checked downloads and normalized batches, offline."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from slimlab.data import cifar10
from slimlab.data.augment import Compose, Normalize, RandomCrop, RandomHorizontalFlip
from slimlab.data.cifar10 import CIFAR10DataModule, RestrictedUnpickler, load_batch
from slimlab.utils.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PER_BATCH, N_TEST = 4, 3
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


pytestmark = pytest.mark.usefixtures("no_network")


def batch_arrays(index: int, n: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [(index + i) % 10 for i in range(n)]


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 strings (SHORT_BINSTRING/BINSTRING), as cPickle did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_python2_str
    dispatch[bytes] = save_python2_str


def python2_style_pickle(batch: dict) -> bytes:
    """Pickle `batch` as the published files are: Python 2 strings, protocol 2, numpy.core."""
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(batch)
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_batches(folder: Path) -> None:
    """A real cifar-10-batches-py folder: data_batch_1..5 and test_batch, PER_BATCH images each."""
    folder.mkdir(parents=True)
    names = [*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH]
    for index, name in enumerate(names):
        data, labels = batch_arrays(index, N_TEST if name == cifar10.TEST_BATCH else PER_BATCH)
        batch = {
            "batch_label": f"{name} of 6",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        }
        (folder / name).write_bytes(python2_style_pickle(batch))
    (folder / "readme.html").write_text("<html></html>")


def make_archive(path: Path, source: Path, extra: tarfile.TarInfo | None = None) -> str:
    """Tar+gzip `source` as cifar-10-batches-py/ (plus `extra`), return the archive's MD5."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname=cifar10.FOLDER)
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path, monkeypatch) -> Path:
    """A local 'server' holding the archive, registered as the published URL and MD5."""
    server = tmp_path / "server"
    write_batches(tmp_path / "build" / cifar10.FOLDER)
    server.mkdir()
    archive = server / cifar10.ARCHIVE
    md5 = make_archive(archive, tmp_path / "build" / cifar10.FOLDER)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5)
    monkeypatch.setattr(cifar10, "URLS", [archive.as_uri()])
    return archive


def test_load_batch_reads_the_published_format(tmp_path) -> None:
    write_batches(tmp_path / cifar10.FOLDER)
    x, y = load_batch(tmp_path / cifar10.FOLDER / "data_batch_3")
    data, labels = batch_arrays(2, PER_BATCH)
    assert x.shape == (PER_BATCH, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(data).view(-1, 3, 32, 32))
    assert y.tolist() == labels and y.dtype == torch.long
    assert torch.equal(x[0, 1].flatten(), torch.from_numpy(data[0, 1024:2048]))  # green plane


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_batch_reads_batches_pickled_by_python3_numpy(tmp_path, protocol) -> None:
    data, labels = batch_arrays(0, 2)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=protocol))
    x, y = load_batch(path)
    assert torch.equal(x.view(2, -1), torch.from_numpy(data)) and y.tolist() == labels


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code_and_does_not_run_it(tmp_path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": RunsShell(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"global (posix|os|nt)\.system is not"):
        RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(ConfigError, match=r"data_batch_1 could not be read as a CIFAR-10 batch"):
        load_batch(path)
    assert not marker.exists(), "the payload must never run"


def test_wrong_batch_contents_name_the_file(tmp_path) -> None:
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ConfigError, match=r"test_batch holds data of shape \(2, 100\)"):
        load_batch(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ConfigError, match=r"test_batch is not a CIFAR-10 batch"):
        load_batch(path)


def test_setup_gives_split_and_normalized_batches(tmp_path) -> None:
    write_batches(tmp_path / cifar10.FOLDER)
    dm = CIFAR10DataModule(
        str(tmp_path),
        download=False,
        batch_size=4,
        val_fraction=0.25,
        normalize=Normalize(MEAN, STD),
        augment=Compose([RandomCrop(32, padding=4), RandomHorizontalFlip()]),
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (15, 5, N_TEST)
    x_raw, y = next(iter(dm.train_dataloader()))
    assert x_raw.dtype == torch.uint8 and x_raw.shape == (4, 3, 32, 32)
    x, _ = dm.on_after_batch_transfer((x_raw, y), 0)  # no trainer: not training, no augment
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (x_raw.float() / 255 - mean) / std)
    test_x, test_y = next(iter(dm.test_dataloader()))
    data, labels = batch_arrays(5, N_TEST)
    assert torch.equal(test_x, torch.from_numpy(data).view(-1, 3, 32, 32))
    assert test_y.tolist() == labels


def test_download_is_verified_unpacked_and_loaded(tmp_path, served) -> None:
    target = tmp_path / "data" / "cifar10"
    dm = CIFAR10DataModule(str(target), download=True, batch_size=2)
    dm.prepare_data()
    assert (target / cifar10.ARCHIVE).is_file()
    assert (target / cifar10.FOLDER / "test_batch").is_file()
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []
    dm.setup()
    assert len(dm.data_train) + len(dm.data_val) == 5 * PER_BATCH
    assert len(dm.data_test) == N_TEST


def test_checksum_mismatch_is_detected_and_not_kept(tmp_path, served, monkeypatch) -> None:
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", "0" * 32)
    target = tmp_path / "cifar10"
    with pytest.raises(ConfigError, match=r"MD5 [0-9a-f]{32} is not the expected 0{32}"):
        CIFAR10DataModule(str(target), download=True).prepare_data()
    assert not target.exists() or not any(target.iterdir()), "nothing unverified is left"


@pytest.mark.parametrize(
    "name",
    ["../escape.txt", "/tmp/absolute.txt", f"{cifar10.FOLDER}/../../escape.txt", "link"],
)
def test_unsafe_archive_members_are_refused(tmp_path, monkeypatch, name) -> None:
    write_batches(tmp_path / "build" / cifar10.FOLDER)
    member = tarfile.TarInfo(name)
    if name == "link":
        member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        member.size = 1
    target = tmp_path / "data"
    target.mkdir()
    md5 = make_archive(target / cifar10.ARCHIVE, tmp_path / "build" / cifar10.FOLDER, member)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5)
    with pytest.raises(ConfigError, match=r"refusing to extract|link or device file"):
        CIFAR10DataModule(str(target), download=False).prepare_data()
    assert not (tmp_path / "escape.txt").exists()
    assert not (target / cifar10.FOLDER).exists()
    assert sorted(p.name for p in target.iterdir()) == [cifar10.ARCHIVE]


@pytest.mark.parametrize("download", [False, True])
def test_offline_error_names_directory_and_files(tmp_path, download) -> None:
    target = tmp_path / "empty" / "cifar10"
    with pytest.raises(ConfigError) as info:
        CIFAR10DataModule(str(target), download=download).setup()
    message = str(info.value)
    assert str(target) in message and "\n" not in message
    for name in [cifar10.ARCHIVE, cifar10.FOLDER, *cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH]:
        assert name in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert f"To stage it by hand, put {cifar10.ARCHIVE} (MD5 {cifar10.ARCHIVE_MD5}" in message
    assert not target.exists() or not any(target.iterdir())


def test_incomplete_folder_says_what_is_missing(tmp_path) -> None:
    write_batches(tmp_path / cifar10.FOLDER)
    (tmp_path / cifar10.FOLDER / "data_batch_4").unlink()
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py lacks data_batch_4: delete"):
        CIFAR10DataModule(str(tmp_path)).setup()


def test_config_builds_the_datamodule(tmp_path) -> None:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["data=cifar10", f"paths.data_dir={tmp_path}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, CIFAR10DataModule)
    assert dm.data_dir == tmp_path / "cifar10"
    assert isinstance(dm.normalize, Normalize)
    assert [type(t) for t in dm.augment] == [RandomCrop, RandomHorizontalFlip]
