"""scripts/bench/bench_pruning.py keeps its results under logs/bench/ and leaves docs alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_bench


@pytest.mark.slow
def test_results_go_to_logs_bench_and_docs_change_only_when_asked(tmp_path: Path) -> None:
    docs = ROOT / "docs" / "pruning.md"
    before = docs.read_bytes()
    run_bench("bench_pruning.py", ["--seeds", "1", "--epochs", "3", "--repeats", "1"], tmp_path)
    assert docs.read_bytes() == before
    results = json.loads((tmp_path / "logs" / "bench" / "pruning.json").read_text())
    assert "| SmallCNN, digits 8x8 | dense |" in results["table"]
    assert len(results["accuracy"]["digits_cnn"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]  # nothing beside logs/
