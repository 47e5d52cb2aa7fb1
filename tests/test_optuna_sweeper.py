"""The `slimlab_optuna` Hydra sweeper end to end, on a tiny app run with `-m` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

optuna = pytest.importorskip("optuna")

pytestmark = pytest.mark.slow

APP = """
import os

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback


class CrashAfterJob(Callback):
    # kills the sweep after a job ended and wrote its status, before the sweeper hears of it

    def on_job_end(self, config, job_return, **kwargs):
        if config.hydra.job.num in config.crash_after_jobs:
            os._exit(3)


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    job = HydraConfig.get().job.num
    if job in cfg.crash_jobs:
        os._exit(3)  # the whole sweep dies, as on a killed node
    if job in cfg.fail_jobs:
        raise RuntimeError(f"job {job} failed on purpose")
    if job in cfg.none_jobs:
        return None
    if cfg.multi:
        return [(cfg.x - 2) ** 2, cfg.y]
    return (cfg.x - 2) ** 2 + cfg.y


if __name__ == "__main__":
    main()
"""

CONFIG = """
defaults:
  - override hydra/sweeper: slimlab_optuna
  - _self_
x: 0.0
y: 0
multi: false
fail_jobs: []
none_jobs: []
crash_jobs: []
crash_after_jobs: []
hydra:
  callbacks:
    crash_after:
      _target_: __main__.CrashAfterJob
  sweeper:
    study_name: quadratic
    direction: minimize
    n_trials: 8
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 0
      n_startup_trials: 5
    params:
      x: interval(-4.0, 6.0)
      y: choice(0, 1, 2)
"""


def sweep(tmp_path: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the app in tmp_path with `-m`, its sweep dir and sqlite study under tmp_path."""
    app = tmp_path / "app.py"
    if not app.exists():
        app.write_text(APP)
        (tmp_path / "config.yaml").write_text(CONFIG)
    cmd = [
        sys.executable,
        str(app),
        "-m",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}",
        *overrides,
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def load_study(tmp_path: Path) -> optuna.Study:
    """The study the sweeps in tmp_path wrote."""
    return optuna.load_study(study_name="quadratic", storage=f"sqlite:///{tmp_path / 'study.db'}")


def job_folders(tmp_path: Path) -> list[str]:
    """Names of the job folders of the sweep, in job order."""
    folders = [p.name for p in (tmp_path / "multirun").iterdir() if p.is_dir()]
    return sorted(folders, key=int)


def test_sweep_runs_each_trial_in_its_folder_and_writes_the_best(tmp_path: Path) -> None:
    sweep(tmp_path)
    assert job_folders(tmp_path) == [str(i) for i in range(8)]
    for i in range(8):
        assert (tmp_path / "multirun" / str(i) / ".hydra" / "overrides.yaml").is_file()
    results = OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml")
    # the optimum is 0 at x=2, y=0; the range of (x-2)**2 + y over the space is [0, 38]
    assert results.best_value < 1.0
    assert abs(results.best_params.x - 2) < 1.0 and results.best_params.y == 0
    assert results.trials.complete == 8
    assert len(load_study(tmp_path).trials) == 8


def test_rerun_with_more_trials_resumes_the_study(tmp_path: Path) -> None:
    sweep(tmp_path, "hydra.sweeper.n_trials=4")
    before = load_study(tmp_path).trials
    first_overrides = {
        i: (tmp_path / "multirun" / str(i) / ".hydra" / "overrides.yaml").read_text()
        for i in range(4)
    }

    sweep(tmp_path, "hydra.sweeper.n_trials=7")
    after = load_study(tmp_path).trials
    assert len(after) == 7
    assert [(t.params, t.value) for t in after[:4]] == [(t.params, t.value) for t in before]
    assert job_folders(tmp_path) == [str(i) for i in range(7)]
    for i, text in first_overrides.items():  # earlier job folders were not overwritten
        assert (tmp_path / "multirun" / str(i) / ".hydra" / "overrides.yaml").read_text() == text
    # the resumed sampler is reseeded, so it does not replay the first run's trials
    assert len({t.params["x"] for t in after}) == 7

    sweep(tmp_path, "hydra.sweeper.n_trials=7")  # nothing left to run
    assert len(load_study(tmp_path).trials) == 7


def test_failed_jobs_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    proc = sweep(
        tmp_path,
        "hydra.sweeper.n_trials=4",
        "fail_jobs=[1]",
        "none_jobs=[2]",
        "x=interval(0.0, 4.0)",  # a command-line sweep replaces the config's search space
        check=False,
    )
    states = [t.state.name for t in load_study(tmp_path).trials]
    assert states == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert all(0.0 <= t.params["x"] <= 4.0 for t in load_study(tmp_path).trials)
    assert "the task returned None" in proc.stdout + proc.stderr
    results = OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml")
    assert results.trials == {"complete": 2, "fail": 2}
    # the job that raised is recorded in its folder, and the command ends non-zero naming it
    status = json.loads((tmp_path / "multirun" / "1" / "job_status.json").read_text())
    assert status["status"] == "FAILED" and "job 1 failed on purpose" in status["error"]
    assert proc.returncode == 1
    assert "1 of 4 jobs failed" in proc.stderr
    assert "#1 " in proc.stderr and "RuntimeError: job 1 failed on purpose" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_trial_interrupted_by_a_crash_runs_again_on_resume(tmp_path: Path) -> None:
    crashed = sweep(tmp_path, "hydra.sweeper.n_trials=4", "crash_jobs=[2]", check=False)
    assert crashed.returncode != 0
    assert load_study(tmp_path).trials[2].state.name == "RUNNING"

    sweep(tmp_path, "hydra.sweeper.n_trials=4")
    trials = load_study(tmp_path).trials
    assert trials[2].state.name == "FAIL"
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == 2]
    assert retry.state.name == "COMPLETE" and retry.params == trials[2].params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4
    assert job_folders(tmp_path) == [str(i) for i in range(5)]


def test_trial_finished_just_before_a_crash_is_recorded_not_run_again(tmp_path: Path) -> None:
    crashed = sweep(tmp_path, "hydra.sweeper.n_trials=4", "crash_after_jobs=[1]", check=False)
    assert crashed.returncode != 0
    assert load_study(tmp_path).trials[1].state.name == "RUNNING"
    status = json.loads((tmp_path / "multirun" / "1" / "job_status.json").read_text())
    assert status["status"] == "COMPLETED"

    sweep(tmp_path, "hydra.sweeper.n_trials=4")
    trials = load_study(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert trials[1].value == status["value"]  # told from the job's own record
    assert job_folders(tmp_path) == [str(i) for i in range(4)]  # nothing ran twice


def test_multi_objective_writes_the_pareto_front(tmp_path: Path) -> None:
    sweep(
        tmp_path,
        "multi=true",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.direction=[minimize,minimize]",
    )
    results = OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml")
    assert results.direction == ["minimize", "minimize"]
    assert len(results.best_trials) >= 1
    assert all(len(t["values"]) == 2 for t in results.best_trials)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.sweeper.params.x='intervl(1, 2)'", "hydra.sweeper.params.x=intervl(1, 2)"),
        ("hydra.sweeper.params.x='tag(lg, interval(1, 2))'", "valid tags: int, log"),
        ("hydra.sweeper.params.x='interval(3, 1)'", "is not a valid search space"),
        ("hydra.sweeper.direction=upward", "hydra.sweeper.direction='upward' is not valid"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0 is out of range"),
    ],
)
def test_bad_sweeper_config_fails_with_a_clear_message(
    tmp_path: Path, override: str, message: str
) -> None:
    proc = sweep(tmp_path, override, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr  # the message alone, as for every bad input
    assert not (tmp_path / "multirun" / "0").exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ana:s3cret@db:5432/optuna", "postgresql://ana:***@db:5432/optuna"),
        ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
        (None, None),
    ],
)
def test_results_and_messages_never_show_a_storage_password(url: str | None, shown: str) -> None:
    from hydra_plugins.slimlab_optuna_sweeper.optuna_sweeper import redacted

    assert redacted(url) == shown
