"""The GPU suite's runs: what each test trains, and how it trains on CUDA and tests on CPU.

Every gpu test is what a user types: `python train.py trainer=gpu ...` in a subprocess
(`conftest.run_cli`), then `python eval.py ckpt_path=<best> trainer.accelerator=cpu`, and the
two runs' test metrics compared. The override lists live here, as data, so a CPU test
(test_gpu_commands.py) composes every one of them through Hydra's compose API.

Runs are short (digits, 3 epochs unless a schedule needs more): the whole suite fits in the
few minutes scripts/gpu_check.sh gives it.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli, run_folders

EPOCHS = 3
# quieter logs; everything else is the user's default run
QUIET = ["callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]
RUN_TIMEOUT_S = 240  # one train.py or eval.py process

# name -> overrides after `python train.py`; {teacher}, {devices}, {batch_size} are filled in
RUNS: dict[str, list[str]] = {
    # precision on one GPU
    "fp32": ["trainer=gpu"],
    "bf16-mixed": ["trainer=gpu", "trainer.precision=bf16-mixed"],
    "16-mixed": ["trainer=gpu", "trainer.precision=16-mixed"],
    # bitsandbytes' CUDA kernels: 8-bit (and paged) optimizer state, 8/4-bit linear weights
    "adamw8bit": ["trainer=gpu", "optimizer=adamw8bit"],
    "paged_adamw8bit": ["trainer=gpu", "optimizer=paged_adamw8bit"],
    "bnb_int8": [
        "trainer=gpu",
        "experiment=digits_mlp",
        "compression=bnb_weights",
        "compression.bnb_weights.mode=int8",
    ],
    "bnb_nf4": [
        "trainer=gpu",
        "experiment=digits_mlp",
        "compression=bnb_weights",
        "compression.bnb_weights.mode=nf4",
    ],
    # compression callbacks on CUDA (schedules shortened to fit 3 epochs)
    "prune": [
        "trainer=gpu",
        "experiment=digits_prune",
        "compression.prune.start_epoch=1",
        "compression.prune.report.latency=false",
    ],
    "qat": [
        "trainer=gpu",
        "experiment=digits_qat",
        "compression.qat.start_epoch=1",
        "compression.qat.freeze_bn_epoch=2",
        "compression.qat.freeze_observer_epoch=2",
    ],
    "qat_fake_quant": [  # the fake-quantized network, kept for testing on the GPU
        "trainer=gpu",
        "experiment=digits_qat",
        "compression.qat.start_epoch=1",
        "compression.qat.freeze_bn_epoch=2",
        "compression.qat.freeze_observer_epoch=2",
        "compression.qat.convert=false",
    ],
    "distill": [
        "trainer=gpu",
        "experiment=digits_distill",
        "compression.distill.teacher_ckpt={teacher}",
        "compression.distill.report.latency=false",
    ],
    "recipe": [  # experiment=digits_compress, its schedule shortened as tests/compression does
        "trainer=gpu",
        "experiment=digits_compress",
        "trainer.max_epochs=5",
        "compression.prune.steps=2",
        "compression.prune.end_epoch=2",
        "compression.prune.report.latency=false",
        "compression.qat.start_epoch=3",
        "compression.qat.freeze_bn_epoch=4",
        "compression.qat.freeze_observer_epoch=4",
        "compression.distill.report.latency=false",
        "compression.distill.teacher_ckpt={teacher}",
    ],
    # strategies
    "ddp": ["trainer=ddp", "trainer.devices={devices}", "data.batch_size={batch_size}"],
    "fsdp": ["trainer=fsdp", "trainer.devices=1"],
    "deepspeed": ["trainer=deepspeed", "trainer.devices=1"],
}

# each compression callback under a sharded strategy: the overrides that switch it on
COMPRESSION: dict[str, list[str]] = {
    "prune": RUNS["prune"][1:],
    "qat": RUNS["qat"][1:],
    "distill": RUNS["distill"][1:],
    "bnb_weights": RUNS["bnb_nf4"][1:],
}
SHARDED = ("fsdp", "deepspeed")


def _command(args: list[str], values: dict[str, Any]) -> list[str]:
    args = [arg.format(**values) for arg in args]
    if not any(arg.startswith("trainer.max_epochs=") for arg in args):
        args.append(f"trainer.max_epochs={EPOCHS}")
    return [*args, *QUIET]


def overrides(name: str, **values: Any) -> list[str]:
    """The command line of run `name` (a RUNS key), placeholders filled from `values`."""
    return _command(RUNS[name], values)


def sharded_overrides(compression: str, strategy: str, **values: Any) -> list[str]:
    """The command line of `compression` (a COMPRESSION key) under `trainer=<strategy>`."""
    return _command(
        [f"trainer={strategy}", "trainer.devices=1", *COMPRESSION[compression]], values
    )


@dataclass
class Run:
    """A finished train.py run: its folder and its metrics.json."""

    folder: Path
    summary: dict[str, Any]

    @property
    def best(self) -> str:
        """The checkpoint train.py tested (what eval.py, export and serve start from)."""
        best = self.summary.get("best_checkpoint")
        assert best and Path(best).exists(), f"no best checkpoint in {self.folder}: {best}"
        return best


def finished_run(tmp_path: Path) -> Run:
    """The one run a train.py command left under tmp_path."""
    folders = [f for f in run_folders(tmp_path) if (f / "metrics.json").is_file()]
    assert len(folders) == 1, f"expected one run folder with metrics.json, got {folders}"
    return Run(folders[0], json.loads((folders[0] / "metrics.json").read_text()))


def train(args: list[str], tmp_path: Path) -> Run:
    """`python train.py <args>` under tmp_path; the run it left."""
    run_cli("train.py", args, tmp_path, timeout=RUN_TIMEOUT_S)
    return finished_run(tmp_path)


def evaluate_on_cpu(ckpt: str, tmp_path: Path, extra: list[str] | tuple = ()) -> dict[str, Any]:
    """`python eval.py ckpt_path=<ckpt> trainer.accelerator=cpu`; its metrics.json."""
    out = tmp_path / "eval_cpu"
    run_cli(
        "eval.py",
        [f"ckpt_path={ckpt}", "trainer.accelerator=cpu", *extra],
        out,
        timeout=RUN_TIMEOUT_S,
    )
    (metrics,) = (out / "logs" / "eval").glob("**/metrics.json")
    return json.loads(metrics.read_text())


# test accuracy may move by a few of the 270 digits test images between a CUDA run (TF32
# convolutions, bf16/fp16 autocast) and the fp32 CPU eval; the loss by a little
TOLERANCE = {"32": (0.01, 0.02), "mixed": (0.025, 0.06)}


def assert_same_test_metrics(
    trained: dict[str, Any],
    evaluated: dict[str, Any],
    precision: str = "32",
    extra_acc: float = 0.0,
) -> None:
    """The CPU eval reproduces the GPU run's test accuracy and loss within `precision`'s bounds."""
    acc_tol, loss_tol = TOLERANCE["32" if precision.startswith("32") else "mixed"]
    acc_tol += extra_acc
    a, b = trained["test"], evaluated["test"]
    assert abs(a["acc"] - b["acc"]) <= acc_tol, f"test/acc GPU {a['acc']} vs CPU eval {b['acc']}"
    assert abs(a["loss"] - b["loss"]) <= loss_tol, (
        f"test/loss GPU {a['loss']} vs CPU eval {b['loss']}"
    )


def assert_refused_at_setup(proc: Any, compression: str, strategy: str, tmp_path: Path) -> None:
    """Exit code 2 and one `Error:` line naming compression.<key>, the strategy refused and
    the strategies that are supported; no traceback, nothing trained."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}, not 2"
    assert "Traceback" not in output, output[-6000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr[-4000:]
    message = errors[0].lower()
    assert f"compression.{compression}" in message, errors[0]
    assert strategy in message, f"does not name the {strategy} strategy: {errors[0]}"
    supported = ("ddp", "one device", "single device", "single-device", "singledevice")
    assert any(word in message for word in supported), f"names no supported strategy: {errors[0]}"
    assert not list((tmp_path / "logs").glob("**/*.ckpt")), "refused after training started"


_SHARED: dict[str, Run | Exception] = {}


def shared_run(name: str, tmp_path_factory: pytest.TempPathFactory, **values: Any) -> Run:
    """Run `name` once per test session (the fp32 run is also the teacher and the export
    source); a failure is kept and re-raised for every test that needs the run."""
    if name not in _SHARED:
        try:
            _SHARED[name] = train(overrides(name, **values), tmp_path_factory.mktemp(name))
        except Exception as exc:  # kept, re-raised below
            _SHARED[name] = exc
    result = _SHARED[name]
    if isinstance(result, Exception):
        raise result
    return result


def require_module(name: str, why: str) -> None:
    """Skip, with the install command, when the optional package `name` is missing."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed: {why}")
