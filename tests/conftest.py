"""Shared fixtures: configs composed through Hydra's compose API, CLI runs in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from slimlab.utils.compose import NO_BARS, QUIET  # noqa: F401  (re-exported for the tests)
from slimlab.utils.compose import compose_config as slimlab_compose

ROOT = Path(__file__).resolve().parents[1]


def compose_config(
    tmp_path: Path, overrides: Sequence[str] = (), config_name: str = "train"
) -> DictConfig:
    """Compose `config_name` with `overrides`, every output redirected under `tmp_path`."""
    return slimlab_compose(overrides, tmp_path, config_name)


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """compose_cfg(overrides, config_name="train") -> a composed config writing under tmp_path."""

    def _compose(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
        return compose_config(tmp_path, overrides, config_name)

    yield _compose
    GlobalHydra.instance().clear()


def run_cli(
    script: str, args: Sequence[str], tmp_path: Path, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run `python <script> args...` from the repo root with logs and data under tmp_path."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [
        sys.executable,
        str(ROOT / script),
        *args,
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        "extras.print_config=false",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\n"
            f"STDERR:\n{proc.stderr[-6000:]}"
        )
    return proc


def run_bench(script: str, args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run `python scripts/bench/<script> args...` in `cwd` (its logs/bench/ lands there, not in
    the repo: SLIMLAB_ROOT unset), one thread; fails the test on a non-zero exit."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SLIMLAB_ROOT", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_folders(tmp_path: Path) -> list[Path]:
    """Every job folder (one holding .hydra or metrics.json) under tmp_path/logs."""
    logs = tmp_path / "logs"
    folders = {p.parent for p in logs.glob("**/metrics.json")}
    folders |= {p.parent for p in logs.glob("**/.hydra")}
    return sorted(folders)


@pytest.fixture
def no_network(monkeypatch):
    """Let urlopen read file:// URLs only: no test may touch the network."""
    real = urllib.request.urlopen

    def urlopen(url, *args, **kwargs):
        if not str(url).startswith("file:"):
            raise urllib.error.URLError(f"network disabled in tests ({url})")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def cuda_skip_reason() -> str | None:
    """Why `gpu` tests cannot run in this process, or None when CUDA is usable."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (
        f"gpu test: torch.cuda.is_available() is False (torch {torch.__version__}, {build}); "
        "run scripts/gpu_check.sh on a machine with an NVIDIA GPU"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every `gpu`-marked test, with the reason, where CUDA is not available."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    reason = cuda_skip_reason() if gpu_items else None
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


# -- export / inference: one trained digits checkpoint and its export, shared by their tests -----
DIGITS_TINY = [
    "model.net.widths=[16,32]",
    "model.optimizer.lr=0.01",  # ~95% test accuracy in 4 epochs
    "trainer.max_epochs=4",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    "logger=none",
]


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The best checkpoint of a short dense digits CNN run (4 epochs, widths 16/32)."""
    from slimlab.train import train

    tmp = tmp_path_factory.mktemp("digits_ckpt")
    _, objects = train(compose_config(tmp, [*DIGITS_TINY, "test=false", "name=digits_tiny"]))
    GlobalHydra.instance().clear()
    return Path(objects["trainer"].checkpoint_callback.best_model_path)


@pytest.fixture(scope="session")
def digits_export(digits_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """export.py's folder for `digits_ckpt`: model.onnx, model.int8.onnx, model.pt2 and
    export.json."""
    from slimlab.export import export

    out = tmp_path_factory.mktemp("digits_export") / "export"
    cfg = compose_config(
        out.parent,
        [f"ckpt_path={digits_ckpt}", f"output_dir={out}", "quantize=int8", "latency.rounds=2"],
        config_name="export",
    )
    export(cfg)
    GlobalHydra.instance().clear()
    return out


@pytest.fixture(scope="session")
def digits_qat_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The int8 checkpoint of a short QAT digits CNN run (2 fp32 + 3 QAT epochs, widths 16/32);
    the QAT-prepared checkpoint of the same epoch lies beside it without the -int8 suffix."""
    from slimlab.train import train

    tmp = tmp_path_factory.mktemp("digits_qat_ckpt")
    overrides = [*DIGITS_TINY, "trainer.max_epochs=5", "test=false", "name=digits_qat_tiny"]
    overrides += ["compression=qat", "compression.qat.start_epoch=2"]
    overrides += ["compression.qat.report=false"]
    _, objects = train(compose_config(tmp, overrides))
    GlobalHydra.instance().clear()
    best = Path(objects["trainer"].checkpoint_callback.best_model_path)
    assert best.name.endswith("-int8.ckpt"), best
    return best


@pytest.fixture(scope="session")
def digits_qat_export(digits_qat_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """export.py's folder for `digits_qat_ckpt` (no `quantize`: a QAT checkpoint is int8)."""
    from slimlab.export import export

    out = tmp_path_factory.mktemp("digits_qat_export") / "export"
    cfg = compose_config(
        out.parent,
        [f"ckpt_path={digits_qat_ckpt}", f"output_dir={out}", "latency.rounds=2"],
        config_name="export",
    )
    export(cfg)
    GlobalHydra.instance().clear()
    return out
