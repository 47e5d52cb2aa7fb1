"""scripts/bench/bench_gpu.py's code path, on CPU: both loops train, results land in --out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "bench" / "bench_gpu.py"


@pytest.mark.slow
def test_cpu_mode_measures_both_loops_and_writes_results(tmp_path: Path) -> None:
    args = ["--device", "cpu", "--batch-size", "4", "--warmup", "1", "--steps", "2"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--repeats", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert set(result["images_per_s"]) == {
        "slimlab fp32",
        "plain fp32",
        "slimlab bf16-mixed",
        "plain bf16-mixed",
    }
    assert all(v > 0 for runs in result["images_per_s"].values() for v in runs)
    assert set(result["ratios"]) == {
        "bf16-mixed / fp32, slimlab",
        "bf16-mixed / fp32, plain",
        "slimlab / plain, fp32",
        "slimlab / plain, bf16-mixed",
    }
    table = (tmp_path / "bench_gpu.md").read_text()
    assert "| slimlab | fp32 |" in table and "slimlab / plain, fp32" in table
    assert result["device"] == "cpu" and result["settings"]["batch_size"] == 4


@pytest.mark.slow  # imports Lightning in a subprocess
def test_update_docs_needs_a_gpu_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--update-docs", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--update-docs records GPU results" in proc.stderr
    assert not list(tmp_path.iterdir())
