"""slimlab.utils.sweeps: each job of a sweep records how it ended, in its own folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimlab.utils.errors import ConfigError, exit_on_config_error, require
from slimlab.utils.sweeps import (
    Failure,
    JobExited,
    SweepFailed,
    raise_if_failed,
    read_status,
    recording,
)


def _run(compose_cfg, task):
    cfg = compose_cfg(["seed=3"])
    folder = Path(cfg.hydra.runtime.output_dir)
    return recording(task), cfg, folder


def test_a_completed_job_records_its_returned_value(compose_cfg) -> None:
    task, cfg, folder = _run(compose_cfg, lambda cfg: [0.5, 2])
    assert task(cfg) == [0.5, 2]
    status = read_status(folder)
    assert status["status"] == "COMPLETED" and status["value"] == [0.5, 2]
    assert "seed=3" in status["overrides"]


def test_a_failed_job_records_the_error_and_still_raises(compose_cfg) -> None:
    def task(cfg):
        raise RuntimeError("out of memory")

    wrapped, cfg, folder = _run(compose_cfg, task)
    with pytest.raises(RuntimeError, match="out of memory"):
        wrapped(cfg)
    status = json.loads((folder / "job_status.json").read_text())
    assert status["status"] == "FAILED" and status["error"] == "RuntimeError: out of memory"
    assert "raise RuntimeError" in status["traceback"]


def test_an_entry_exiting_on_bad_input_fails_its_job_only(compose_cfg, capsys) -> None:
    def task(cfg):  # what train.py does: a ConfigError becomes one line and exit code 2
        with exit_on_config_error():
            require(False, "model.optimizer.lr=-1 is out of range: give a positive rate")

    wrapped, cfg, folder = _run(compose_cfg, task)
    with pytest.raises(JobExited, match="lr=-1 is out of range"):  # not SystemExit
        wrapped(cfg)
    assert read_status(folder)["error"] == (
        "model.optimizer.lr=-1 is out of range: give a positive rate"
    )
    assert "Error: model.optimizer.lr=-1" in capsys.readouterr().err


def test_a_pruned_trial_is_recorded_as_pruned(compose_cfg) -> None:
    optuna = pytest.importorskip("optuna")

    def task(cfg):
        raise optuna.TrialPruned("pruned at epoch 3")

    wrapped, cfg, folder = _run(compose_cfg, task)
    with pytest.raises(optuna.TrialPruned):
        wrapped(cfg)
    assert read_status(folder)["status"] == "PRUNED"


def test_the_end_of_sweep_error_names_each_failed_job(tmp_path: Path) -> None:
    raise_if_failed([], 3, tmp_path)  # nothing failed: no error
    failures = [Failure(1, ("lr=-1",), "lr=-1 is out of range"), Failure(4, ("lr=9",), "NaN")]
    with pytest.raises(SweepFailed) as error:
        raise_if_failed(failures, 6, tmp_path)
    message = str(error.value)
    assert message.splitlines()[:3] == [
        "2 of 6 jobs failed (the others ran):",
        "  #1 lr=-1: lr=-1 is out of range",
        "  #4 lr=9: NaN",
    ]
    assert isinstance(ConfigError("x"), ValueError)  # SweepFailed is not a ConfigError
    assert not isinstance(error.value, ConfigError)
