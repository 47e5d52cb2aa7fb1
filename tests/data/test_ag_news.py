"""AG News: CSV parsing, checked downloads and offline errors, on generated files, offline."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from generated_data import write_ag_news
from slimlab.data import ag_news
from slimlab.data.ag_news import AGNewsDataModule, read_csv
from slimlab.utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture
def served(tmp_path, monkeypatch) -> Path:
    """A local 'server' holding the two CSV files, registered as the published URLs and MD5s."""
    server = write_ag_news(tmp_path / "server", n_train=40, n_test=12)
    for name in ag_news.URLS:
        monkeypatch.setitem(ag_news.URLS, name, (server / name).as_uri())
        md5 = hashlib.md5((server / name).read_bytes()).hexdigest()
        monkeypatch.setitem(ag_news.MD5, name, md5)
    return server


def test_read_csv_joins_title_and_description_and_shifts_labels(tmp_path) -> None:
    texts, labels = read_csv(write_ag_news(tmp_path, n_train=8, n_test=1) / "train.csv")
    assert labels == [0, 1, 2, 3, 0, 1, 2, 3]
    assert texts[1] == 'The goal today Reports say the goal, "quoted", was a big deal #1'


def test_bad_row_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "train.csv"
    path.write_text('"1","a","b"\n"7","c","d"\n')
    with pytest.raises(ConfigError, match=r"train.csv line 2 is \['7', 'c', 'd'\]"):
        read_csv(path)


def test_download_is_verified_and_gives_dict_batches(tmp_path, served) -> None:
    target = tmp_path / "data" / "ag_news"
    dm = AGNewsDataModule(str(target), download=True, batch_size=4, val_fraction=0.25)
    dm.prepare_data()
    assert sorted(p.name for p in target.iterdir()) == ["test.csv", "train.csv"]
    dm.setup()
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (30, 10, 12)
    assert dm.data_test.labels.tolist() == [i % 4 for i in range(12)]
    batch = next(iter(dm.test_dataloader()))
    assert batch["input_ids"].shape == (4, 64) and batch["labels"].dtype == torch.long


def test_checksum_mismatch_is_detected_and_not_kept(tmp_path, served, monkeypatch) -> None:
    monkeypatch.setitem(ag_news.MD5, "test.csv", "0" * 32)
    target = tmp_path / "ag_news"
    with pytest.raises(ConfigError, match=r"test.csv.*MD5 [0-9a-f]{32} is not the expected 0{32}"):
        AGNewsDataModule(str(target)).prepare_data()
    assert not (target / "test.csv").exists()
    assert not list(target.glob(".*.part")), "no partial download may be left behind"


def test_existing_corrupted_file_is_named(tmp_path, served) -> None:
    target = tmp_path / "ag_news"
    shutil.copytree(served, target)
    with open(target / "train.csv", "a") as f:
        f.write('"1","tampered","row"\n')
    with pytest.raises(ConfigError, match=r"train.csv has MD5 [0-9a-f]{32}, not the published"):
        AGNewsDataModule(str(target), download=False).setup()


@pytest.mark.parametrize("download", [False, True])
def test_offline_error_names_file_and_url(tmp_path, download) -> None:
    target = tmp_path / "empty"
    with pytest.raises(ConfigError) as info:
        AGNewsDataModule(str(target), download=download).setup()
    message = str(info.value)
    assert str(target / "train.csv") in message and ag_news.URLS["train.csv"] in message
    assert "\n" not in message
    assert not target.exists() or not any(target.iterdir())


def test_config_builds_the_datamodule(compose_cfg, tmp_path) -> None:
    cfg = compose_cfg(["data=ag_news", "model=hf_text", f"paths.data_dir={tmp_path}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, AGNewsDataModule) and dm.num_classes == 4
    assert dm.data_dir == tmp_path / "ag_news" and dm.tokenizer is None
    cfg = compose_cfg(["experiment=ag_news_bert", f"paths.data_dir={tmp_path}"])
    assert cfg.data.tokenizer == "prajjwal1/bert-tiny"  # the model's own tokenizer
    assert cfg.model.net.pretrained_model_name_or_path == "prajjwal1/bert-tiny"
