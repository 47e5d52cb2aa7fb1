"""scripts/bench/bench_pruning.py keeps its results under logs/bench/ and leaves docs alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_results_go_to_logs_bench_and_docs_change_only_when_asked(tmp_path: Path) -> None:
    docs = ROOT / "docs" / "pruning.md"
    before = docs.read_bytes()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SLIMLAB_ROOT", None)
    args = ["--seeds", "1", "--epochs", "3", "--repeats", "1"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "bench_pruning.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert docs.read_bytes() == before
    results = json.loads((tmp_path / "logs" / "bench" / "pruning.json").read_text())
    assert "| SmallCNN, digits 8x8 | dense |" in results["table"]
    assert len(results["accuracy"]["digits_cnn"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # nothing beside logs/
