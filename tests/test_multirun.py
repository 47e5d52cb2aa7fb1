"""Multirun: grid sweeps, Optuna searches through train.py, and never-colliding job folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli, run_folders

FAST = ["trainer.max_epochs=1", "callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]


@pytest.mark.slow
def test_grid_multirun_gives_each_job_its_own_folder(tmp_path: Path) -> None:
    run_cli(
        "train.py",
        ["-m", "model.optimizer.lr=1e-3,3e-3", "data.batch_size=32,64", *FAST],
        tmp_path,
    )
    jobs = [f for f in run_folders(tmp_path) if (f / "metrics.json").is_file()]
    assert len(jobs) == 4
    seen = set()
    for job in jobs:
        overrides = tuple(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        seen.add(tuple(o for o in overrides if o.startswith(("model.optimizer.lr", "data.batch"))))
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert json.loads((job / "metrics.json").read_text())["test"]["acc"] > 0
    assert len(seen) == 4


@pytest.mark.slow
def test_runs_started_in_the_same_second_never_share_a_folder(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "debug=fdr",
        f"paths.log_dir={tmp_path / 'logs'}",
        "extras.print_config=false",
    ]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-3000:]
    runs = sorted((tmp_path / "logs" / "debug" / "default" / "runs").iterdir())
    assert len(runs) == 3
    assert len({r.name for r in runs}) == 3


@pytest.mark.slow
def test_optuna_search_through_train_py_resumes(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [
        "hparams_search=digits_optuna",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *FAST,
    ]
    run_cli("train.py", ["-m", *args, "hydra.sweeper.n_trials=2"], tmp_path)
    run_cli("train.py", ["-m", *args, "hydra.sweeper.n_trials=3"], tmp_path)
    jobs = [f for f in run_folders(tmp_path) if (f / "metrics.json").is_file()]
    assert len(jobs) == 3, jobs
    results = sorted((tmp_path / "logs").glob("**/optimization_results.yaml"))
    assert len(results) == 2
    best = yaml.safe_load(results[-1].read_text())
    assert 0.0 < float(best["best_value"]) <= 1.0

    import optuna

    study = optuna.load_study(study_name="digits_optuna", storage=storage)
    assert len(study.trials) == 3
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    accs = [json.loads((j / "metrics.json").read_text())["val"]["acc_best"] for j in jobs]
    assert sorted(round(t.value, 6) for t in study.trials) == sorted(round(a, 6) for a in accs)
    # every epoch's val/acc reached the trial (callbacks.optuna_pruning), for the pruner
    assert all(sorted(t.intermediate_values) == [0] for t in study.trials)


@pytest.mark.slow
def test_optuna_pruner_stops_trials_through_the_callback(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run_cli(
        "train.py",
        [
            "-m",
            "hparams_search=digits_optuna",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.n_trials=2",
            # val/acc is always below 1.1: every trial is pruned once its warm-up epoch is over
            "hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner",
            "+hydra.sweeper.pruner.lower=1.1",
            "hydra.sweeper.pruner.n_warmup_steps=1",
            *FAST,
            "trainer.max_epochs=4",
        ],
        tmp_path,
    )
    import optuna

    study = optuna.load_study(study_name="digits_optuna", storage=storage)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    # reported after epochs 0 and 1, stopped after epoch 1 of 4
    assert all(sorted(t.intermediate_values) == [0, 1] for t in study.trials)
    assert all(0.0 < v <= 1.0 for t in study.trials for v in t.intermediate_values.values())
    (results,) = (tmp_path / "logs").glob("**/optimization_results.yaml")
    assert yaml.safe_load(results.read_text())["trials"] == {"pruned": 2}
    for job in run_folders(tmp_path):  # a pruned job keeps what it wrote, and tests nothing
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert not (job / "metrics.json").exists()
