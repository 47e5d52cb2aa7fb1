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
def test_ddp_sim_optuna_search_with_a_pruned_trial(tmp_path: Path) -> None:
    # hparams_search sets hydra.mode=MULTIRUN: the rank-1 worker must still run one job, and a
    # trial the pruner stops must end both ranks cleanly (a worker that fails makes Lightning
    # kill the whole sweep) and reach the study as PRUNED
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = run_cli(
        "train.py",
        [
            "hparams_search=digits_optuna",
            "trainer=ddp_sim",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
            "+hydra.sweeper.pruner.lower=0.9",  # prunes a trial below 90% val acc after epoch 1
            "hydra.sweeper.pruner.n_warmup_steps=1",
            "trainer.max_epochs=3",
            "data.batch_size=128",
            "callbacks.rich_progress_bar=null",
        ],
        tmp_path,
    )
    import optuna

    study = optuna.load_study(study_name="digits_optuna", storage=storage)
    states = [t.state.name for t in study.trials]
    assert len(states) == 2 and set(states) <= {"COMPLETE", "PRUNED"} and "PRUNED" in states
    for trial, job in zip(study.trials, run_folders(tmp_path), strict=True):
        assert (job / "train_rank1.log").is_file()
        assert "Launching" not in (job / "train_rank1.log").read_text()  # no nested sweep
        pruned = trial.intermediate_values.get(1, 1.0) < 0.9
        assert (trial.state.name == "PRUNED") == pruned
        assert (job / "metrics.json").is_file() == (not pruned)
    assert "Error executing job" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_ddp_sim_batch_size_must_divide(tmp_path: Path) -> None:
    proc = run_cli("train.py", ["trainer=ddp_sim", "data.batch_size=63"], tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("data.batch_size=63 does not divide by the world size 2") == 1
    assert "Traceback" not in proc.stderr
