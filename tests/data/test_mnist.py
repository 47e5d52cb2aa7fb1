"""MNIST: IDX parsing, checked downloads, offline errors and normalized batches, all offline."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from slimlab.data import mnist
from slimlab.data.augment import Normalize, RandomShift
from slimlab.data.mnist import MNISTDataModule, read_idx
from slimlab.utils.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
N_TRAIN, N_TEST = 20, 6


pytestmark = pytest.mark.usefixtures("no_network")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) in IDX format, gzipped when `path` ends in .gz."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def make_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST) % 10).astype(np.uint8),
    }


@pytest.fixture
def served(tmp_path, monkeypatch) -> Path:
    """A folder with the four .gz files, registered as their published MD5s."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    md5 = {}
    for name, array in make_arrays().items():
        write_idx(folder / f"{name}.gz", array)
        md5[f"{name}.gz"] = hashlib.md5((folder / f"{name}.gz").read_bytes()).hexdigest()
    monkeypatch.setattr(mnist, "MD5", md5)
    return folder


@pytest.fixture
def data_dir(tmp_path, served) -> Path:
    """An MNIST data_dir already holding the four files."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for path in served.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_read_idx_gives_shapes_and_values_gz_or_raw(tmp_path) -> None:
    arrays = make_arrays()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        write_idx(tmp_path / f"{name}.gz", arrays[name])
        write_idx(tmp_path / name, arrays[name])
    for suffix in (".gz", ""):
        images = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", ndim=3)
        labels = read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", ndim=1)
        assert images.shape == (N_TRAIN, 28, 28) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, arrays["train-images-idx3-ubyte"])
        np.testing.assert_array_equal(labels, np.arange(N_TRAIN) % 10)


def test_corrupt_idx_files_name_the_file(tmp_path) -> None:
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(struct.pack(">I", 0x0000_0801) + struct.pack(">I", 3) + b"\x01\x02\x03")
    with pytest.raises(ConfigError, match=r"bad-magic has magic number 0x00000801, expected"):
        read_idx(bad_magic, ndim=3)
    short = tmp_path / "short.gz"
    write_idx(short, np.zeros((4, 28, 28), np.uint8))
    truncated = gzip.decompress(short.read_bytes())[:-10]
    short.write_bytes(gzip.compress(truncated))
    with pytest.raises(ConfigError, match=r"short.gz declares shape \(4, 28, 28\)"):
        read_idx(short, ndim=3)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not gzip at all")
    with pytest.raises(ConfigError, match=r"broken.gz is not a valid gzip file"):
        read_idx(broken, ndim=1)


def test_setup_gives_split_and_normalized_uint8_batches(data_dir) -> None:
    dm = MNISTDataModule(
        str(data_dir),
        download=False,
        batch_size=4,
        val_fraction=0.25,
        seed=7,
        normalize=Normalize([0.1307], [0.3081]),
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (15, 5, N_TEST)
    x_raw, y = next(iter(dm.train_dataloader()))
    assert x_raw.dtype == torch.uint8 and x_raw.shape == (4, 1, 28, 28)
    x, y2 = dm.on_after_batch_transfer((x_raw, y), 0)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, (x_raw.float() / 255 - 0.1307) / 0.3081)
    assert torch.equal(y, y2) and y.dtype == torch.long
    test_x, test_y = next(iter(dm.test_dataloader()))
    expected = torch.from_numpy(make_arrays()["t10k-images-idx3-ubyte"][:4]).unsqueeze(1)
    assert torch.equal(test_x, expected)
    assert test_y.tolist() == [0, 1, 2, 3]


def test_split_is_fixed_by_seed(data_dir) -> None:
    def val_images(seed: int) -> torch.Tensor:
        dm = MNISTDataModule(str(data_dir), download=False, val_fraction=0.25, seed=seed)
        dm.setup()
        return dm.data_val.tensors[0]

    assert torch.equal(val_images(1), val_images(1))
    assert not torch.equal(val_images(1), val_images(2))


def test_without_normalize_batches_are_only_scaled_to_unit_range(data_dir) -> None:
    dm = MNISTDataModule(str(data_dir), download=False, batch_size=2)
    dm.setup()
    x_raw, y = next(iter(dm.val_dataloader()))
    x, _ = dm.on_after_batch_transfer((x_raw, y), 0)
    torch.testing.assert_close(x, x_raw.float() / 255)


def test_download_from_mirror_is_verified_and_falls_back(tmp_path, served, monkeypatch) -> None:
    missing_mirror = (tmp_path / "nowhere").as_uri() + "/"
    monkeypatch.setattr(mnist, "MIRRORS", [missing_mirror, served.as_uri() + "/"])
    target = tmp_path / "data" / "mnist"
    dm = MNISTDataModule(str(target), download=True, batch_size=4)
    dm.prepare_data()
    assert sorted(p.name for p in target.iterdir()) == sorted(mnist.MD5)
    dm.setup()
    assert len(dm.data_train) + len(dm.data_val) == N_TRAIN


def test_checksum_mismatch_is_detected_and_not_kept(tmp_path, served, monkeypatch) -> None:
    monkeypatch.setattr(mnist, "MIRRORS", [served.as_uri() + "/"])
    monkeypatch.setitem(mnist.MD5, "t10k-images-idx3-ubyte.gz", "0" * 32)
    target = tmp_path / "mnist"
    dm = MNISTDataModule(str(target), download=True)
    with pytest.raises(ConfigError, match="MD5 .* is not the expected 0{32}"):
        dm.prepare_data()
    assert not (target / "t10k-images-idx3-ubyte.gz").exists()
    assert not list(target.glob("*.part")), "no partial download may be left behind"


def test_existing_file_with_wrong_checksum_names_it(data_dir, monkeypatch) -> None:
    monkeypatch.setitem(mnist.MD5, "train-labels-idx1-ubyte.gz", "f" * 32)
    with pytest.raises(ConfigError, match=r"train-labels-idx1-ubyte.gz has MD5 .* not the"):
        MNISTDataModule(str(data_dir), download=False).prepare_data()


@pytest.mark.parametrize("download", [False, True])
def test_offline_error_names_directory_and_files(tmp_path, download) -> None:
    target = tmp_path / "empty" / "mnist"
    dm = MNISTDataModule(str(target), download=download)
    with pytest.raises(ConfigError) as info:
        dm.setup()
    message = str(info.value)
    assert str(target) in message
    for name, md5 in mnist.MD5.items():
        assert f"{name} (MD5 {md5})" in message  # what to stage by hand, and its checksum
    assert "ossci-datasets.s3.amazonaws.com/mnist" in message
    assert "\n" not in message
    assert not target.exists() or not any(target.iterdir()), "nothing half-written is left"


def test_config_builds_the_datamodule(tmp_path) -> None:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["data=mnist", f"paths.data_dir={tmp_path}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, MNISTDataModule)
    assert dm.data_dir == tmp_path / "mnist"
    assert isinstance(dm.normalize, Normalize) and isinstance(dm.augment, RandomShift)
    assert dm.augment.max_shift == 2
