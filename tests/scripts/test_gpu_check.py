"""scripts/gpu_check.sh without a GPU: its shell syntax, the PyTorch build it picks from the
driver's CUDA version, the commands it plans (--dry-run), and its clear refusals."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
FILES_IN_ORDER = [
    "tests/gpu/test_gpu_precision.py",
    "tests/gpu/test_gpu_bitsandbytes.py",
    "tests/gpu/test_gpu_compression.py",
    "tests/gpu/test_gpu_strategies.py",
    "tests/gpu/test_gpu_export_serve.py",
    "tests/gpu/test_gpu_sharded_compression.py",
]


def _check(tmp_path: Path, *args: str, timeout: int = 60, **env: str):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    environ.pop("SLIMLAB_WHEELHOUSE", None)
    environ.update(PYTHON=sys.executable, GPU_CHECK_OUT=str(tmp_path / "out"), **env)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=environ, timeout=timeout
    )


def test_shell_syntax() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize(
    ("cuda", "builds"),
    [
        ("12.4", "cu124 cu121 cu118"),
        ("12.5", "cu124 cu121 cu118"),  # no 12.5 build: the newest the driver runs
        ("12.8", "cu128 cu126 cu124 cu121 cu118"),
        ("13.1", "cu130 cu129 cu128 cu126 cu124 cu121 cu118"),
    ],
)
def test_driver_cuda_picks_the_newest_build_it_runs(tmp_path: Path, cuda: str, builds: str):
    proc = _check(tmp_path, "--dry-run", "--no-install", GPU_CHECK_CUDA_VERSION=cuda)
    assert proc.returncode == 0, proc.stderr
    assert f"driver CUDA {cuda}: torch==2.13.0 builds to try, in order: {builds}\n" in proc.stdout


def test_dry_run_plans_tests_cheap_first_summary_and_bench(tmp_path: Path) -> None:
    # a fake nvidia-smi printing the real header: the CUDA version is read from it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho '| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    "
        "CUDA Version: 12.4     |'\n"
    )
    smi.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    proc = _check(tmp_path, "--dry-run", "--no-install", "--update-docs", PATH=path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "driver CUDA 12.4: torch==2.13.0 builds to try, in order: cu124" in out
    (pytest_line,) = [line for line in out.splitlines() if " -m pytest " in line]
    assert "-m gpu" in pytest_line and "--timeout=240" in pytest_line
    assert f"--junitxml={tmp_path}/out/junit.xml" in pytest_line
    assert pytest_line.startswith("+ timeout --signal=INT --kill-after=30 360 ")
    assert pytest_line.split()[-len(FILES_IN_ORDER) :] == FILES_IN_ORDER
    assert sorted(FILES_IN_ORDER) == sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "gpu").glob("test_gpu_*.py")
        if p.name != "test_gpu_commands.py"  # the CPU checks of the suite itself
    )  # fmt: skip
    assert "scripts/gpu_summary.py table" in out and "--update-docs" in out
    assert "scripts/bench/bench_gpu.py --out" in out
    assert not (tmp_path / "out").exists(), "--dry-run must not write anything"


def test_refuses_without_a_usable_driver_or_with_a_bad_option(tmp_path: Path) -> None:
    old = _check(tmp_path, "--dry-run", GPU_CHECK_CUDA_VERSION="11.4")
    assert old.returncode == 1 and "update the NVIDIA driver" in old.stderr
    bad = _check(tmp_path, "--fast")
    assert bad.returncode == 2 and "unknown option '--fast'" in bad.stderr
    if shutil.which("nvidia-smi") is None:
        none = _check(tmp_path, "--dry-run")
        assert none.returncode == 1 and "nvidia-smi not found" in none.stderr


@pytest.mark.slow
def test_dry_run_plans_offline_installs_from_the_wheelhouse(tmp_path: Path) -> None:
    import torch

    wheelhouse = tmp_path / "wheels"
    proc = _check(
        tmp_path,
        "--dry-run",
        timeout=300,
        GPU_CHECK_CUDA_VERSION="12.8",
        SLIMLAB_WHEELHOUSE=str(wheelhouse),
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    offline = f"-m pip install --no-index --find-links {wheelhouse}"
    if torch.cuda.is_available():
        assert "torch sees the GPU: kept" in out
    else:  # this CPU build is replaced by the newest CUDA build the driver runs
        assert f"{sys.executable} -m pip uninstall --yes torch" in out
        assert f"{offline} torch==2.13.0+cu128\n" in out
    # the project and DeepSpeed are installed in this environment: both kept
    assert "slimlab (this checkout) and its dev extras import: kept" in out
    deepspeed_kept = "deepspeed imports: kept" in out
    assert deepspeed_kept or f"{offline} --no-build-isolation deepspeed==0.19.8" in out
    assert not (tmp_path / "out").exists()
