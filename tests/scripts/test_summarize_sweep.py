"""scripts/summarize_sweep.py reads the metrics.json files a sweep leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def _job(root: Path, name: str, acc: float, overrides: list[str]) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "metrics.json").write_text(json.dumps({"test": {"acc": acc}, "params": 10}))


def test_jobs_are_listed_best_first(tmp_path: Path) -> None:
    _job(tmp_path, "0", 0.90, ["model.optimizer.lr=0.001"])
    _job(tmp_path, "1", 0.95, ["model.optimizer.lr=0.003"])
    script = ROOT / "scripts" / "summarize_sweep.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| 0") or line.startswith("| 1")]
    assert rows[0].startswith("| 1 | 0.9500") and "lr=0.003" in rows[0]
    assert rows[1].startswith("| 0 | 0.9000")


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "summarize_sweep.py"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "no metrics.json" in proc.stderr
