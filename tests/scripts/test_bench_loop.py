"""scripts/bench/bench_loop.py: the plain loop and SlimLab's run do the same work, results go
under logs/bench/ and docs change only when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_loop_part_compares_the_same_work_and_leaves_docs_alone(tmp_path: Path) -> None:
    docs = ROOT / "docs" / "performance.md"
    before = docs.read_bytes()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SLIMLAB_ROOT", None)
    args = ["--parts", "loop", "--cases", "digits", "--rounds", "1", "--digits-epochs", "1"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / "bench_loop.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert docs.read_bytes() == before
    results = json.loads((tmp_path / "logs" / "bench" / "loop.json").read_text())
    variants = results["loop"]["digits"]["variants"]
    assert set(variants) == {"plain", "slimlab", "stripped"}
    assert len({v["steps"] for v in variants.values()}) == 1  # the same number of steps
    assert all(v["steps_per_s"] > 0 and v["test_acc"] > 0.5 for v in variants.values())
    assert "| digits, SmallCNN, 1 epochs | plain PyTorch loop |" in results["loop_table"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # nothing beside logs/
