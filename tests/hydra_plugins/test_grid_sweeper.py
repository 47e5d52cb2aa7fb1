"""`slimlab_grid`, the default sweeper: Hydra's grid, and a failed job never stops the others."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from hydra_plugins.slimlab_grid_sweeper.grid_sweeper import grid
from slimlab.utils.compose import NO_BARS


def test_grid_is_hydras_cartesian_product_in_hydras_order() -> None:
    assert grid(["a=1,2", "b=x,y", "c=3"]) == [
        ["a=1", "b=x", "c=3"],
        ["a=1", "b=y", "c=3"],
        ["a=2", "b=x", "c=3"],
        ["a=2", "b=y", "c=3"],
    ]
    # a later override of a key replaces the earlier one in its place (params, then argv)
    assert grid(["a=1,2", "b=5", "a=range(3,5)"]) == [["a=3", "b=5"], ["a=4", "b=5"]]
    assert grid(["+extra=choice(p,q)"]) == [["+extra=p"], ["+extra=q"]]


def test_a_continuous_range_is_a_clear_error() -> None:
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match="a grid sweep needs a list of values"):
        grid(["lr=interval(0.1, 1.0)"])


@pytest.mark.slow
def test_a_failing_job_is_recorded_the_others_run_and_the_sweep_exits_1(tmp_path: Path) -> None:
    proc = run_cli(
        "train.py",
        ["-m", "model.optimizer.lr=1e-3,-1,2e-3", "trainer.max_epochs=1", *NO_BARS],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    (sweep,) = (tmp_path / "logs" / "train" / "default" / "multiruns").iterdir()
    statuses = {j: json.loads((sweep / j / "job_status.json").read_text()) for j in "012"}
    assert [statuses[j]["status"] for j in "012"] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert "model.optimizer.lr=-1 is out of range" in statuses["1"]["error"]
    assert (sweep / "2" / "metrics.json").is_file(), "the job after the failed one ran"
    assert not (sweep / "1" / "metrics.json").exists()
    # the end of the output names the failed job, its override and its error, once
    tail = proc.stderr[proc.stderr.index("1 of 3 jobs failed") :]
    assert "#1 model.optimizer.lr=-1: model.optimizer.lr=-1 is out of range" in tail
    assert "Traceback" not in proc.stderr

    # the sweep report shows the same, from the files the jobs left
    report = [sys.executable, str(ROOT / "scripts" / "sweep_report.py"), str(sweep)]
    subprocess.run(report, check=True, capture_output=True, timeout=120)
    with (sweep / "report" / "jobs.csv").open() as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert rows["1"]["status"] == "FAILED" and "out of range" in rows["1"]["error"]
    assert rows["1"]["model.optimizer.lr"] == "-1"
    assert float(rows["2"]["test.acc"]) > 0.5
