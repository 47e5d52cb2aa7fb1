"""The W&B logger offline: a real wandb run written to disk, one per job in a multirun."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli, run_folders
from slimlab.train import train

pytest.importorskip("wandb")

LIMIT = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2"]


def test_wandb_offline_writes_a_run_with_config_and_params(
    compose_cfg, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg(["logger=wandb", "logger.wandb.offline=true", *LIMIT])
    train(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (run,) = runs
    (data,) = run.glob("*.wandb")
    records = data.read_bytes()  # protobuf records; config values are stored as JSON text
    for expected in (b"model/params/net", b"slimlab.models.nets.SmallCNN", b"val/acc"):
        assert expected in records, expected
    assert "finishing run" in (run / "logs" / "debug.log").read_text()
    import wandb

    assert wandb.run is None, "the job's W&B run must be finished when the job ends"


@pytest.mark.slow
def test_wandb_multirun_jobs_are_separate_runs_in_one_group(tmp_path: Path) -> None:
    run_cli(
        "train.py",
        ["-m", "logger=wandb", "logger.wandb.offline=true", "seed=1,2", *LIMIT],
        tmp_path,
    )
    jobs = [f for f in run_folders(tmp_path) if (f / "metrics.json").is_file()]
    assert len(jobs) == 2
    groups = set()
    for job in jobs:
        (run,) = (job / "wandb").glob("offline-run-*")
        group = job.parent.name  # the sweep folder
        (data,) = run.glob("*.wandb")
        assert group.encode() in data.read_bytes(), "the run was not created in the sweep group"
        assert "finishing run" in (run / "logs" / "debug.log").read_text()
        groups.add(group)
    assert len(groups) == 1
    runs = {next((job / "wandb").glob("offline-run-*")).name for job in jobs}
    assert len(runs) == 2, "each job must be its own W&B run"
