"""Scale-out without a cluster: SLURM's environment hands ranks to Lightning (and a preempted job
requeues and resumes), submitit runs a real sweep, torchrun runs a real 2-process DDP job."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose_config, run_cli, run_folders
from slimlab.utils import resolvers
from slimlab.utils.compose import NO_BARS
from slimlab.utils.ddp import external_launcher, install_hydra_ddp_launcher

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2"]


def slurm_env(job_id: str = "4242", ntasks: int = 1, procid: int = 0) -> dict[str, str]:
    """The variables `srun` sets for one task of a single-node job."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": "train",
        "SLURM_NTASKS": str(ntasks),
        "SLURM_NTASKS_PER_NODE": str(ntasks),
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid),
        "SLURM_NODEID": "0",
    }


def test_under_slurm_lightning_takes_the_ranks_and_slimlab_launches_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment
    from lightning.pytorch.strategies.launchers import subprocess_script
    from lightning_utilities.core.rank_zero import rank_zero_only

    for key, value in slurm_env(ntasks=2, procid=1).items():
        monkeypatch.setenv(key, value)
    # the trainer below makes this process rank 1 for rank-zero-only code: undo it afterwards
    monkeypatch.setattr(rank_zero_only, "rank", getattr(rank_zero_only, "rank", 0))
    before = subprocess_script._hydra_subprocess_cmd
    assert external_launcher() == "slurm"
    assert install_hydra_ddp_launcher() is False
    assert subprocess_script._hydra_subprocess_cmd is before  # Lightning's own, untouched
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False)
    assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
    assert (trainer.global_rank, trainer.world_size) == (1, 2)
    # SLURM started the processes: Lightning's launcher starts none
    assert trainer.strategy.cluster_environment.creates_processes_externally
    # every task of the job names the same run folder; rank 1 logs to its own file
    assert resolvers.run_name() == "slurm-4242"
    assert resolvers.rank_suffix() == "_rank1"
    assert (resolvers.launcher_procs_per_node(4), resolvers.launcher_nodes(1)) == (2, 1)


def test_under_torchrun_the_ranks_share_one_run_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"RANK": "1", "GROUP_RANK": "0", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    env |= {"WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1", "TORCHELASTIC_RUN_ID": "5e1f00d5-aa"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert external_launcher() == "torchrun"
    assert resolvers.run_name() == "torchrun-5e1f00d5"
    assert (resolvers.launcher_procs_per_node(4), resolvers.launcher_nodes(1)) == (2, 1)


def test_without_a_launcher_folders_are_unique_per_process() -> None:
    assert external_launcher() is None
    assert resolvers.run_name().endswith("_" + resolvers.run_id())
    assert resolvers.rank_suffix() == ""


def test_slurm_launcher_config_composes_with_its_commented_keys(tmp_path: Path) -> None:
    cfg = compose_config(tmp_path, ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu"
    for key in ("nodes", "gpus_per_node", "tasks_per_node", "timeout_min", "mem_gb"):
        assert key in launcher
    assert launcher.array_parallelism >= 1 and launcher.signal_delay_s > 0


@pytest.mark.slow
def test_preempted_slurm_job_requeues_and_resumes_in_its_folder(tmp_path: Path) -> None:
    # a stand-in for SLURM's scontrol that records what Lightning asks of it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, **slurm_env(), PATH=f"{bin_dir}:{os.environ['PATH']}")
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *NO_BARS,
        "trainer.max_epochs=20",  # long enough that the job is still training when killed
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        f"paths.log_dir={tmp_path / 'logs'}",
        "extras.print_config=false",
    ]
    folder = tmp_path / "logs" / "train" / "default" / "runs" / "slurm-4242"
    hpc = folder / "hpc_ckpt_1.ckpt"
    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not (folder / "checkpoints" / "last.ckpt").is_file():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(signal.SIGUSR1)  # SLURM's warning before preemption
            while not hpc.is_file():
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            while not (tmp_path / "scontrol.log").is_file():  # the requeue call, then
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            proc.kill()  # the node goes away
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    stopped_at = torch.load(hpc, weights_only=True)["epoch"]
    assert not (folder / "metrics.json").exists()

    # the requeued job runs the same command: same folder, Lightning restores the hpc checkpoint
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    output = second.stdout + second.stderr
    assert f"Restoring states from the checkpoint path at {hpc}" in output
    assert "SLURM auto-requeueing enabled" in output
    assert [p.name for p in folder.parent.iterdir()] == ["slurm-4242"]
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["epochs_run"] == 20 and summary["test"]["acc"] > 0
    last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 20 * 3  # no epoch lost, none repeated
    assert stopped_at < 19


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    run_cli(
        "train.py", ["-m", "hydra/launcher=submitit_local", "seed=1,2", *NO_BARS, *TINY], tmp_path
    )
    (sweep,) = (tmp_path / "logs" / "train" / "default" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"], "both jobs write into the sweep's one folder"
    for job in jobs:
        assert json.loads((job / "metrics.json").read_text())["test"]["acc"] > 0
        assert json.loads((job / "job_status.json").read_text())["status"] == "COMPLETED"
    # each job ran in its own submitit process, which left its logs
    assert len(list((sweep / ".submitit").glob("**/*_log.out"))) == 2


@pytest.mark.slow
def test_torchrun_two_processes_one_run_folder(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        str(ROOT / "train.py"),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.sync_batchnorm=false",  # SyncBatchNorm needs GPUs
        *NO_BARS,
        *TINY,
        f"paths.log_dir={tmp_path / 'logs'}",
        "extras.print_config=false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    (folder,) = run_folders(tmp_path)
    assert folder.name.startswith("torchrun-")
    assert len(list((tmp_path / "logs").glob("**/metrics.json"))) == 1
    assert json.loads((folder / "metrics.json").read_text())["test"]["acc"] > 0
    assert (folder / "train_rank1.log").is_file()
    assert "Starting with 2 processes" in output  # Lightning's torchelastic environment
    assert output.count("Starting training") == 1  # log lines from rank 0 only
