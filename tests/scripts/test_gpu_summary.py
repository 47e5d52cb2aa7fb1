"""scripts/gpu_summary.py: the GPU check's table from a real pytest junit file, and the machine."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_summary.py"
SAMPLE_TESTS = """
import time
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_passes():
    time.sleep(0.2)

def test_fails():
    assert 1 == 2, "one is not two | really"

def test_skips():
    pytest.skip("needs CUDA")

@pytest.mark.xfail(reason="known")
def test_xfails():
    assert False

def test_errors(broken):
    pass
"""


def _junit(tmp_path: Path) -> Path:
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    junit = tmp_path / "junit.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    return junit


def _summary(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def test_table_lists_every_test_with_outcome_seconds_and_environment(tmp_path: Path) -> None:
    junit = _junit(tmp_path)
    env = {
        "gpus": ["NVIDIA H100 80GB HBM3"],
        "nvidia_smi": ["NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB"],
        "driver_cuda": "12.4",
        "torch_cuda": "12.4",
        "versions": {"torch": "2.13.0+cu124", "lightning": "2.6.6", "deepspeed": None},
        "python": "3.11.9",
        "date": "2025-01-01 10:00",
        "platform": "Linux",
    }
    (tmp_path / "env.json").write_text(json.dumps(env))
    doc = tmp_path / "gpu.md"
    doc.write_text("# GPU\n\n<!-- gpu_tests:start -->\nnot run yet\n<!-- gpu_tests:end -->\nend\n")

    proc = _summary(
        "table", str(junit), "--env", str(tmp_path / "env.json"),
        "--markdown", str(tmp_path / "out.md"), "--update-docs", "--doc", str(doc),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0][2:]: line for line in proc.stdout.splitlines() if "::" in line}
    outcomes = {name.split("::")[1]: row.split(" | ")[1] for name, row in rows.items()}
    assert outcomes == {
        "test_passes": "passed",
        "test_fails": "failed",
        "test_skips": "skipped",
        "test_xfails": "xfailed",
        "test_errors": "error",
    }
    assert float(rows["test_sample::test_passes"].split(" | ")[2]) >= 0.2
    assert "one is not two \\| really" in rows["test_sample::test_fails"]  # the cell stays one
    assert "needs CUDA" in rows["test_sample::test_skips"]
    assert "1 x NVIDIA H100 80GB HBM3" in proc.stdout and "driver 550.54.15" in proc.stdout
    assert "torch 2.13.0+cu124" in proc.stdout and "deepspeed" not in proc.stdout
    assert "1 passed, 1 failed, 1 error, 1 skipped, 1 xfailed" in proc.stdout

    text = doc.read_text()
    assert "not run yet" not in text and "| test_sample::test_fails | failed |" in text
    assert text.endswith("<!-- gpu_tests:end -->\nend\n")
    assert (tmp_path / "out.md").read_text().strip() in text


def test_env_records_this_machine(tmp_path: Path, monkeypatch) -> None:
    import torch

    spec = importlib.util.spec_from_file_location("gpu_summary", SCRIPT)
    gpu_summary = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_summary", gpu_summary)  # dataclasses look it up
    spec.loader.exec_module(gpu_summary)
    out = tmp_path / "env.json"
    assert gpu_summary.main(["env", str(out)]) == 0
    env = json.loads(out.read_text())
    assert env["versions"]["torch"] == importlib.metadata.version("torch")
    assert env["cuda_available"] == torch.cuda.is_available()
    assert len(env["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert "- GPU: " in "\n".join(gpu_summary.describe_env(env))


def test_missing_junit_is_a_clear_error(tmp_path: Path) -> None:
    proc = _summary("table", str(tmp_path / "junit.xml"))
    assert proc.returncode == 2 and "junit.xml does not exist" in proc.stderr
