"""`trainer=ddp_sim`: two real gloo DDP processes under Hydra, each test in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli, run_folders

FAST = ["trainer.max_epochs=2", "callbacks.rich_progress_bar=null"]


@pytest.mark.slow
def test_ddp_sim_trains_into_one_run_folder(tmp_path: Path) -> None:
    proc = run_cli("train.py", ["trainer=ddp_sim", *FAST], tmp_path)
    (folder,) = run_folders(tmp_path)
    assert (folder / "train_rank1.log").is_file(), "rank 1 did not run in the job's folder"
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["test"]["acc"] > 0.5
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1
    # each rank saw half of each global batch of 64: 1257 train images -> 20 steps/epoch
    assert ckpt["global_step"] == 2 * 20
    output = proc.stdout + proc.stderr
    assert output.count("Starting training") == 1, "log lines must come from rank 0 only"
    rank1_log = (folder / "train_rank1.log").read_text()
    assert "Starting training" not in rank1_log


@pytest.mark.slow
def test_ddp_sim_inside_a_multirun(tmp_path: Path) -> None:
    run_cli(
        "train.py",
        ["-m", "trainer=ddp_sim", "model.optimizer.lr=1e-3,2e-3", "trainer.max_epochs=1"],
        tmp_path,
    )
    jobs = [f for f in run_folders(tmp_path) if (f / "metrics.json").is_file()]
    assert len(jobs) == 2
    assert all((job / "train_rank1.log").is_file() for job in jobs)


@pytest.mark.slow
def test_ddp_sim_batch_size_must_divide(tmp_path: Path) -> None:
    proc = run_cli("train.py", ["trainer=ddp_sim", "data.batch_size=63"], tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("data.batch_size=63 does not divide by the world size 2") == 1
    assert "Traceback" not in proc.stderr
