"""scripts/bench/bench_gpu.py's code path on CPU: both loops train, the results land in --out,
and a result measured elsewhere renders into the docs (GPU results only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "bench" / "bench_gpu.py"


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_cpu_mode_measures_both_loops_and_results_render_into_the_docs(tmp_path: Path) -> None:
    small = ["--batch-size", "4", "--warmup", "1", "--steps", "2", "--repeats", "1"]
    proc = _bench("--device", "cpu", *small, "--out", str(tmp_path))
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

    doc = tmp_path / "gpu.md"
    doc.write_text("# GPU\n<!-- bench_gpu:start -->\nnot yet\n<!-- bench_gpu:end -->\n")
    update = ["--update-docs", "--doc", str(doc)]
    refused = _bench("--from-json", str(tmp_path / "bench_gpu.json"), *update)
    assert refused.returncode == 2 and "records GPU results" in refused.stderr
    assert "not yet" in doc.read_text()

    # the same file as if measured on a GPU elsewhere and fetched: it renders into the docs
    result["device"] = "NVIDIA H100 80GB HBM3"
    fetched = tmp_path / "fetched.json"
    fetched.write_text(json.dumps(result))
    assert _bench("--from-json", str(fetched), *update).returncode == 0
    text = doc.read_text()
    assert "not yet" not in text and "| slimlab | fp32 |" in text and "H100" in text
