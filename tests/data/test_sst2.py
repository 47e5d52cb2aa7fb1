"""SST-2: reading GLUE's zip in place, checked downloads and offline errors, offline."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from generated_data import write_sst2
from slimlab.data import sst2
from slimlab.data.sst2 import SST2DataModule, read_tsv
from slimlab.utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def served(tmp_path, monkeypatch) -> Path:
    """A local 'server' holding SST-2.zip, registered as the published URL and MD5."""
    archive = write_sst2(tmp_path / "server", n_train=40, n_dev=10)
    monkeypatch.setattr(sst2, "URL", archive.as_uri())
    monkeypatch.setattr(sst2, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    return archive


def test_read_tsv_gives_sentences_and_labels(tmp_path) -> None:
    archive = write_sst2(tmp_path, n_train=4, n_dev=2)
    assert read_tsv(archive, "SST-2/train.tsv") == (
        ["a dull film , really 0", "a moving film , really 1"]
        + ["a awful film , really 2", "a great film , really 3"],
        [0, 1, 0, 1],
    )


def test_bad_member_or_row_names_where(tmp_path) -> None:
    archive = tmp_path / "SST-2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("SST-2/train.tsv", "sentence\tlabel\ngood\t1\nbad\tneg\n")
    with pytest.raises(ConfigError, match=r"SST-2.zip:SST-2/train.tsv line 3 is \['bad', 'neg'\]"):
        read_tsv(archive, "SST-2/train.tsv")
    with pytest.raises(ConfigError, match=r"SST-2/dev.tsv could not be read"):
        read_tsv(archive, "SST-2/dev.tsv")


def test_download_is_verified_and_read_in_place(tmp_path, served) -> None:
    target = tmp_path / "data" / "sst2"
    dm = SST2DataModule(str(target), download=True, batch_size=5, val_fraction=0.25)
    dm.prepare_data()
    assert [p.name for p in target.iterdir()] == ["SST-2.zip"]  # nothing unpacked
    dm.setup()
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (30, 10, 10)
    assert dm.data_test.labels.tolist() == [i % 2 for i in range(10)]


def test_corrupted_download_is_refused_and_not_kept(tmp_path, served) -> None:
    served.write_bytes(served.read_bytes()[:-7])  # the server now sends a truncated archive
    target = tmp_path / "sst2"
    with pytest.raises(ConfigError, match=r"MD5 [0-9a-f]{32} is not the expected"):
        SST2DataModule(str(target)).prepare_data()
    assert not target.exists() or not any(target.iterdir())


def test_offline_error_names_file_and_url(tmp_path) -> None:
    target = tmp_path / "empty"
    with pytest.raises(ConfigError, match="data.download is false") as info:
        SST2DataModule(str(target), download=False).setup()
    assert str(target / "SST-2.zip") in str(info.value) and sst2.URL in str(info.value)
