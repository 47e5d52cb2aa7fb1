"""scripts/bench/bench_loop.py: the plain loop and SlimLab's run do the same work, results go
under logs/bench/ and docs change only when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_bench


@pytest.mark.slow
def test_loop_part_compares_the_same_work_and_leaves_docs_alone(tmp_path: Path) -> None:
    docs = ROOT / "docs" / "performance.md"
    before = docs.read_bytes()
    args = ["--parts", "loop", "--cases", "digits", "--rounds", "1", "--digits-epochs", "1"]
    run_bench("bench_loop.py", args, tmp_path)
    assert docs.read_bytes() == before
    results = json.loads((tmp_path / "logs" / "bench" / "loop.json").read_text())
    variants = results["loop"]["digits"]["variants"]
    assert set(variants) == {"plain", "slimlab", "stripped"}
    assert len({v["steps"] for v in variants.values()}) == 1  # the same number of steps
    assert all(v["steps_per_s"] > 0 and v["test_acc"] > 0.5 for v in variants.values())
    assert "| digits, SmallCNN, 1 epochs | plain PyTorch loop |" in results["loop_table"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # nothing beside logs/
