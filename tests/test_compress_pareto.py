"""`hparams_search=digits_compress_pareto`: a 12-trial multi-objective compression search, killed
with SIGKILL after 5 trials and resumed with the same command, then reported.

One real sweep is shared by the tests below (module fixture): trials are tiny (2 training
batches per epoch, one epoch past the start of QAT).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, compose_config, run_cli
from slimlab.train import train
from slimlab.utils.compose import NO_BARS

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.slow

N_TRIALS = 12
KILL_AFTER = 5  # finished trials before the sweeper is killed


def _status(job: Path) -> str | None:
    path = job / "job_status.json"
    return json.loads(path.read_text())["status"] if path.is_file() else None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Train a teacher, run the search until 5 trials finished and the 6th has a last.ckpt,
    kill -9 the sweeper, rerun the same command to the end, and report the sweep."""
    tmp = tmp_path_factory.mktemp("pareto")
    teacher_cfg = compose_config(
        tmp / "teacher",
        [*NO_BARS, "logger=none", "trainer.max_epochs=2", "trainer.limit_train_batches=6"],
    )
    _, objects = train(teacher_cfg)
    teacher = objects["trainer"].checkpoint_callback.best_model_path
    qat_start = compose_config(tmp / "probe", ["hparams_search=digits_compress_pareto"])
    max_epochs = int(qat_start.compression.qat.start_epoch) + 1  # QAT trials need one epoch

    args = [
        "hparams_search=digits_compress_pareto",
        f"hydra.sweeper.n_trials={N_TRIALS}",
        f"compression.distill.teacher_ckpt={teacher}",
        f"trainer.max_epochs={max_epochs}",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "callbacks.model_cost.repeats=5",
        *NO_BARS,
    ]
    sweep_dir = tmp / "logs" / "train" / "digits_compress_pareto" / "multiruns"
    sweep_dir = sweep_dir / "digits_compress_pareto"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *args,
        f"paths.log_dir={tmp / 'logs'}",
        f"paths.data_dir={tmp / 'data'}",
        "extras.print_config=false",
    ]  # what run_cli runs, so the resume below is the same command
    killed_job = sweep_dir / str(KILL_AFTER)
    with open(tmp / "first_run.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and proc.poll() is None:
                done = [_status(sweep_dir / str(i)) for i in range(KILL_AFTER)]
                ckpt = killed_job / "checkpoints" / "last.ckpt"
                ready = all(s == "COMPLETED" for s in done) and ckpt.is_file()
                if ready and _status(killed_job) is None:
                    os.kill(proc.pid, signal.SIGKILL)  # as a node failure would
                    break
                time.sleep(0.05)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp / "first_run.log").read_text()[-3000:]
    assert _status(killed_job) is None, "the 6th trial finished before the kill: rerun"

    resumed = run_cli("train.py", args, tmp)  # the same command
    report = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sweep_report.py"), str(sweep_dir)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="digits_compress_pareto", storage=storage)
    teacher_params = json.loads((Path(teacher_cfg.paths.output_dir) / "metrics.json").read_text())
    return {
        "dir": sweep_dir,
        "study": study,
        "resumed": resumed.stdout + resumed.stderr,
        "report": report.stdout,
        "teacher_params": teacher_params["params"],
    }


def test_killed_sweep_resumes_to_12_finished_trials_none_repeated(sweep: dict) -> None:
    trials = sweep["study"].trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == N_TRIALS
    # the trial cut off by the kill is the only non-complete one; it ran again, once
    (interrupted,) = [t for t in trials if t.state.name != "COMPLETE"]
    assert interrupted.state.name == "FAIL" and interrupted.number == KILL_AFTER
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == interrupted.number]
    assert retry.state.name == "COMPLETE" and retry.params == interrupted.params
    # no finished trial ran twice: every complete trial has its own params and job folder
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == N_TRIALS
    jobs = sorted(int(p.name) for p in sweep["dir"].iterdir() if p.name.isdigit())
    assert jobs == list(range(N_TRIALS + 1))
    statuses = [_status(sweep["dir"] / str(j)) for j in jobs]
    assert statuses.count("COMPLETED") == N_TRIALS and statuses[KILL_AFTER] is None
    assert sorted(t.user_attrs["hydra_job_idx"] for t in complete) == [
        j for j in jobs if j != KILL_AFTER
    ]
    assert f"{KILL_AFTER} of {N_TRIALS} trials done" in sweep["resumed"]


def test_the_interrupted_trial_resumes_from_its_last_checkpoint(sweep: dict) -> None:
    (retry,) = [t for t in sweep["study"].trials if "retry_of" in t.user_attrs]
    job = sweep["dir"] / str(retry.user_attrs["hydra_job_idx"])
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    last = sweep["dir"] / str(KILL_AFTER) / "checkpoints" / "last.ckpt"
    assert f"ckpt_path={last}" in overrides
    # the resumed fit started after the epochs the killed job had finished
    with (job / "csv" / "metrics.csv").open() as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f) if row.get("epoch")]
    assert min(epochs) > 0


def test_objectives_are_measured_alike_and_recorded_with_each_trial(sweep: dict) -> None:
    complete = [t for t in sweep["study"].trials if t.state.name == "COMPLETE"]
    recipes = {t.params["compression"] for t in complete}
    assert recipes == {"prune_distill", "prune_distill_qat"}, "QAT on and off both searched"
    for trial in complete:
        job = Path(trial.user_attrs["output_dir"])
        test = json.loads((job / "metrics.json").read_text())["test"]
        assert trial.values == [test["acc"], test["latency_ms"], test["size_mb"]]
        cost = trial.user_attrs["model_cost"]
        assert (cost["batch_size"], cost["threads"], cost["repeats"]) == (32, 1, 5)
        assert cost["latency_ms"] == pytest.approx(test["latency_ms"], rel=1e-6)  # float32 log
        assert test["latency_ms"] > 0
        assert test["params"] < sweep["teacher_params"]  # every recipe shrank the network


def test_optimization_results_hold_the_pareto_set(sweep: dict) -> None:
    results = yaml.safe_load((sweep["dir"] / "optimization_results.yaml").read_text())
    assert results["optimized_metric"] == ["test/acc", "test/latency_ms", "test/size_mb"]
    assert results["direction"] == ["maximize", "minimize", "minimize"]
    front = {t["trial"] for t in results["best_trials"]}
    assert front == {t.number for t in sweep["study"].best_trials}
    for entry in results["best_trials"]:
        assert set(entry["params"]) >= {"compression", "compression.prune.amount"}
        assert list(entry["metrics"]) == results["optimized_metric"]


def test_report_has_the_table_and_the_pareto_plots(sweep: dict) -> None:
    report = sweep["dir"] / "report"
    for name in ("pareto.png", "history.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with (report / "jobs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_TRIALS + 1
    by_job = {row["job"]: row for row in rows}
    assert by_job[str(KILL_AFTER)]["status"] == "INTERRUPTED"
    results = yaml.safe_load((sweep["dir"] / "optimization_results.yaml").read_text())
    assert {r["job"] for r in rows if r["pareto"] == "yes"} == {
        str(t["job"]) for t in results["best_trials"]
    }
    assert "| job | status | compression |" in sweep["report"]
