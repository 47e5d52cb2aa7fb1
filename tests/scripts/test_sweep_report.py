"""scripts/sweep_report.py: the table, the Pareto set and the plots of a sweep's job folders."""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

spec = importlib.util.spec_from_file_location("sweep_report", ROOT / "scripts" / "sweep_report.py")
sweep_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep_report)

PNG = b"\x89PNG\r\n\x1a\n"
# job -> (status, amount, test metrics); jobs 1, 3 and 4 are the Pareto set of (acc up,
# latency down, size down): 0 is beaten by 1 in all three, 2 by 3
JOBS = {
    "0": ("COMPLETED", 0.2, {"acc": 0.95, "latency_ms": 2.0, "size_mb": 0.30}),
    "1": ("COMPLETED", 0.3, {"acc": 0.97, "latency_ms": 1.5, "size_mb": 0.25}),
    "2": ("COMPLETED", 0.5, {"acc": 0.90, "latency_ms": 1.2, "size_mb": 0.20}),
    "3": ("COMPLETED", 0.6, {"acc": 0.93, "latency_ms": 1.0, "size_mb": 0.10}),
    "4": ("COMPLETED", 0.8, {"acc": 0.80, "latency_ms": 0.5, "size_mb": 0.12}),
    "5": ("FAILED", 0.9, None),
    "6": ("PRUNED", 0.4, None),
    "7": (None, 0.7, None),  # killed: no status file
}


def make_sweep(root: Path, with_results: bool = True, logger: dict | None = None) -> Path:
    """A sweep folder as slimlab_optuna leaves it, with the jobs of JOBS."""
    for name, (status, amount, test) in JOBS.items():
        job = root / name
        (job / ".hydra").mkdir(parents=True)
        overrides = ["trainer.max_epochs=3", f"compression.prune.amount={amount}"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        config = {"logger": logger} if logger else {}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        if test is not None:
            (job / "metrics.json").write_text(json.dumps({"test": test, "params": 1000}))
        if status is not None:
            error = "RuntimeError: out of memory" if status == "FAILED" else None
            data = {"status": status, "overrides": overrides, "error": error}
            (job / "job_status.json").write_text(json.dumps(data))
    if with_results:
        results = {
            "optimized_metric": ["test/acc", "test/latency_ms", "test/size_mb"],
            "direction": ["maximize", "minimize", "minimize"],
        }
        (root / "optimization_results.yaml").write_text(yaml.safe_dump(results))
    return root


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as f:
        return {row["job"]: row for row in csv.DictReader(f)}


def test_report_lists_every_job_with_its_status_and_marks_the_pareto_set(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = make_sweep(tmp_path / "sweep")
    assert sweep_report.main([str(sweep), "--wandb", "off"]) == 0
    rows = read_rows(sweep / "report" / "jobs.csv")
    assert {job: row["status"] for job, row in rows.items()} == {
        **{str(i): "COMPLETED" for i in range(5)},
        "5": "FAILED",
        "6": "PRUNED",
        "7": "INTERRUPTED",
    }
    assert {job for job, row in rows.items() if row["pareto"] == "yes"} == {"1", "3", "4"}
    assert rows["5"]["error"] == "RuntimeError: out of memory"
    # the override that differs between jobs is a column; the shared one is not
    assert rows["3"]["compression.prune.amount"] == "0.6"
    assert "trainer.max_epochs" not in rows["3"]
    # sorted by the first objective, best first; jobs without values last
    assert list(rows)[:5] == ["1", "0", "3", "2", "4"]
    for name in ("pareto.png", "history.png"):
        assert (sweep / "report" / name).read_bytes()[:8] == PNG
    markdown = (sweep / "report" / "jobs.md").read_text()
    assert markdown.startswith("| job | status | compression.prune.amount | test.acc |")
    assert markdown in capsys.readouterr().out


def test_objectives_can_be_named_for_any_sweep(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "grid", with_results=False)
    args = [str(sweep), "--objectives", "test/acc:max,test/size_mb:min", "--wandb", "off"]
    assert sweep_report.main(args) == 0
    rows = read_rows(sweep / "report" / "jobs.csv")
    assert {job for job, row in rows.items() if row["pareto"] == "yes"} == {"1", "3"}
    assert (sweep / "report" / "pareto.png").read_bytes()[:8] == PNG


def test_bad_input_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert sweep_report.main([str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert sweep_report.main([str(tmp_path)]) == 2
    assert "no job folder" in capsys.readouterr().err
    sweep = make_sweep(tmp_path / "sweep")
    assert sweep_report.main([str(sweep), "--objectives", "test.acc:up"]) == 2
    assert "--objectives item 'test.acc:up' is not valid" in capsys.readouterr().err


def test_pareto_set_agrees_with_optuna() -> None:
    optuna = pytest.importorskip("optuna")
    rng = random.Random(0)
    directions = ["maximize", "minimize", "minimize"]
    points = [tuple(rng.choice([0.1, 0.2, 0.3, 0.4]) for _ in directions) for _ in range(60)]
    study = optuna.create_study(directions=directions)
    for point in points:
        study.add_trial(
            optuna.trial.create_trial(
                values=list(point),
                params={},
                distributions={},
                state=optuna.trial.TrialState.COMPLETE,
            )
        )
    expected = {t.number for t in study.best_trials}
    front = sweep_report.pareto_set(points, [d == "maximize" for d in directions])
    assert {i for i, in_front in enumerate(front) if in_front} == expected
    # ties: equal points never dominate each other; a point without values is never in it
    assert sweep_report.pareto_set([(1.0, 1.0), (1.0, 1.0), None], [True, False]) == [
        True,
        True,
        False,
    ]


@pytest.mark.slow  # W&B starts its service process: ~5-10 s
def test_under_wandb_the_table_and_plots_go_to_the_sweeps_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb_logger = {"_target_": "lightning.pytorch.loggers.WandbLogger", "project": "slimlab"}
    sweep = make_sweep(
        tmp_path / "2026-01-01_00-00-00_ab12", logger={"wandb": {**wandb_logger, "offline": True}}
    )
    assert sweep_report.main([str(sweep)]) == 0
    (run,) = (sweep / "report" / "wandb").glob("offline-run-*")
    (data,) = run.glob("*.wandb")
    records = data.read_bytes()
    assert b"2026-01-01_00-00-00_ab12" in records  # the group: the sweep folder's name
    assert b"sweep_report" in records  # the job type
    assert b"sweep/jobs" in records and b"sweep/pareto" in records
    media = {p.suffix for p in (run / "files" / "media").glob("**/*.*")}
    assert {".png", ".json"} <= media  # the plots and the table
