"""The task wrapper: bad input is one line and exit 2, loggers are finished, and a run folder
that holds only Hydra's files for this job is removed, never one holding earlier work."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from slimlab.utils.errors import ConfigError
from slimlab.utils.task import remove_unused_run_dir, run_entry, task_wrapper, write_summary


def _cfg(tmp_path: Path):
    out = tmp_path / "logs" / "train" / "demo" / "runs" / "r1"
    return OmegaConf.create({"paths": {"output_dir": str(out), "log_dir": str(tmp_path / "logs")}})


def _hydra_files(folder: Path) -> None:
    (folder / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (folder / ".hydra" / name).write_text("{}\n")
    (folder / "train.log").write_text("")


def test_bad_input_removes_the_fresh_run_folder_and_finishes_wandb(tmp_path, monkeypatch) -> None:
    finished = []
    fake_wandb = types.SimpleNamespace(
        run=object(),
        finish=lambda: finished.append("finish"),
        teardown=lambda: finished.append("teardown"),  # waits until the run is on disk
    )
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    cfg = _cfg(tmp_path)
    _hydra_files(Path(cfg.paths.output_dir))

    @task_wrapper
    def task(cfg):
        raise ConfigError("ckpt_path=latest found no last.ckpt")

    with pytest.raises(ConfigError):
        task(cfg)
    assert finished == ["finish", "teardown"]
    assert not (tmp_path / "logs" / "train").exists()  # the run folder and its empty parents
    assert (tmp_path / "logs").is_dir()


def test_a_folder_holding_anything_else_or_older_is_kept(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    folder = Path(cfg.paths.output_dir)
    _hydra_files(folder)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"earlier work")
    assert not remove_unused_run_dir(cfg) and (folder / "checkpoints" / "last.ckpt").is_file()
    (folder / "checkpoints" / "last.ckpt").unlink()
    os.utime(folder / "train.log", (0, 0))  # a log written before this process started
    assert not remove_unused_run_dir(cfg) and (folder / "train.log").is_file()


def test_run_entry_reports_bad_input_in_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv("SLIMLAB_HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def bad() -> None:
        raise RuntimeError("wrapper") from ConfigError("data.batch_size=0 is out of range")

    with pytest.raises(SystemExit) as info:
        run_entry(bad)
    assert info.value.code == 2
    assert capsys.readouterr().err == "Error: data.batch_size=0 is out of range\n"

    def crash() -> None:
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        run_entry(crash)


def test_run_entry_keeps_the_traceback_when_the_user_asks(monkeypatch) -> None:
    monkeypatch.delenv("SLIMLAB_HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")

    def bad() -> None:
        raise ConfigError("data.batch_size=0 is out of range")

    with pytest.raises(ConfigError):
        run_entry(bad)


def test_write_summary_groups_metrics_by_stage(tmp_path) -> None:
    cfg = _cfg(tmp_path)
    metrics = {"val/acc": 0.5, "test/acc": 0.75, "train/loss": 1.0}
    path = write_summary(cfg, metrics, params=10)
    expected = {"val": {"acc": 0.5}, "test": {"acc": 0.75}, "params": 10}
    assert json.loads(path.read_text()) == expected
