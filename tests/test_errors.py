"""Bad input: one clear message naming the key and what is valid, non-zero exit, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, compose_config, run_cli
from slimlab.train import main, train
from slimlab.utils.errors import ConfigError, describe_error, find_config_error


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.optimizer.lr=-0.1"], "model.optimizer.lr=-0.1 is out of range"),
        (["data.batch_size=0"], "data.batch_size=0 is out of range"),
        (["data.val_fraction=1.5"], "data.val_fraction=1.5 is out of range"),
        (["data.test_fraction=0.9"], "data.test_fraction=0.9 is out of range"),
        (["model.net.widths=[8,0]"], "net.widths=[8, 0] is invalid"),
        (["ckpt_path=/no/such.ckpt"], "ckpt_path=/no/such.ckpt does not exist"),
        (["ckpt_path=latest", "name=never_ran"], "ckpt_path=latest found no last.ckpt"),
        (["train=false", "test=false"], "leaves nothing to do"),
        (["optimized_metric=val/nope", "debug=fdr"], "optimized_metric=val/nope was not logged"),
        (["seed=abc"], "seed='abc' is not an integer"),
        (["trainer.max_epochs=-5"], "trainer.max_epochs=-5: `max_epochs` must be"),
        (["scheduler=step", "model.scheduler.step_size=0"], "model.scheduler.step_size=0"),
        (["compression=prune", "compression.prune.steps=0"], "compression.prune.steps=0"),
        (["logger.csv._target_=nope.Nope"], "logger.csv._target_=nope.Nope does not import"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(compose_cfg, overrides, message) -> None:
    cfg = compose_cfg(overrides)
    with pytest.raises(Exception) as info:
        main(cfg)
    error = find_config_error(info.value)
    assert isinstance(error, ConfigError), info.value
    assert message in str(error)
    if "debug=fdr" not in overrides:  # failed before anything was written
        assert not Path(cfg.paths.output_dir).exists()


def _assert_clean_failure(proc, *expected: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-2000:]


def test_cli_bad_value_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = run_cli("train.py", ["model.optimizer.lr=-1"], tmp_path, check=False)
    assert proc.returncode == 2
    _assert_clean_failure(proc, "Error: model.optimizer.lr=-1 is out of range")


def test_cli_unknown_experiment_lists_the_valid_ones(tmp_path: Path) -> None:
    proc = run_cli("train.py", ["experiment=nope"], tmp_path, check=False)
    _assert_clean_failure(proc, "experiment/nope", "digits_cnn")


def test_cli_unknown_key_is_named(tmp_path: Path) -> None:
    proc = run_cli("train.py", ["model.nope=1"], tmp_path, check=False)
    _assert_clean_failure(proc, "model.nope")


def test_cli_eval_without_ckpt_path(tmp_path: Path) -> None:
    proc = run_cli("eval.py", [], tmp_path, check=False)
    assert proc.returncode == 2
    _assert_clean_failure(proc, "ckpt_path is missing")


def test_failed_run_leaves_earlier_runs_untouched(tmp_path: Path, compose_cfg) -> None:
    cfg = compose_cfg(["trainer.max_epochs=1", "callbacks.rich_progress_bar=null"])
    train(cfg)
    out = Path(cfg.paths.output_dir)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = run_cli("train.py", ["data.batch_size=0"], tmp_path, check=False)
    assert proc.returncode == 2
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


# (command line, the key the last line must name): bad values across every config group
BATTERY = [
    (["data.batch_size=0"], "data.batch_size=0 is out of range"),
    (["data.val_fraction=1.5"], "data.val_fraction=1.5 is out of range"),
    (["data=nope"], "data=nope is not an option"),
    (["model.optimizer.lr=-1"], "model.optimizer.lr=-1 is out of range"),
    (["model.net.widths=[8,0]"], "net.widths=[8, 0] is invalid"),
    (["model.nope=1"], "model.nope is not a key of model"),
    (["optimizer=adamm"], "optimizer=adamm is not an option"),
    (["model.optimizer.weight_decay=-1"], "model.optimizer.weight_decay=-1: Invalid"),
    (["scheduler=plateau", "model.scheduler.factor=2"], "model.scheduler.factor=2: Factor"),
    (["scheduler=cosin"], "scheduler=cosin is not an option"),
    (["trainer.max_epochs=-5"], "trainer.max_epochs=-5: `max_epochs` must be"),
    (["trainer.max_epoch=5"], "did you mean trainer.max_epochs"),
    (["trainer.precision=99"], "trainer.precision=99: Precision 99 is invalid"),
    (["compression=prune", "compression.prune.amount=1.5"], "compression.prune.amount=1.5"),
    (["compression=qat", "compression.qat.bits=4"], "compression.qat.bits=4 is not supported"),
    (["compression=prun"], "compression=prun is not an option"),
    (["logger=nope"], "logger=nope is not an option"),
    (["logger.csv.nme=x"], "did you mean logger.csv.name"),
    (["logger.csv._target_=nope.Nope"], "logger.csv._target_=nope.Nope does not import"),
    (["seed=abc"], "seed='abc' is not an integer"),
    (["ckpt_path=latest", "name=never_ran"], "ckpt_path=latest found no last.ckpt"),
]
if not torch.cuda.is_available():
    BATTERY.append((["trainer=ddp", "trainer.devices=4"], "trainer.accelerator=gpu needs a CUDA"))


@pytest.mark.slow
def test_battery_of_bad_values_ends_in_one_short_message(tmp_path: Path) -> None:
    """Each bad command line: exit 2, <= 10 lines, the last one names the key; nothing is
    written (no run folder is left, the earlier run's files are byte for byte the same)."""
    earlier = tmp_path / "logs" / "train" / "default" / "runs" / "earlier"
    short = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "logger=csv"]
    cfg = compose_config(tmp_path, [*short, "callbacks.rich_progress_bar=null"])
    cfg.paths.output_dir = str(earlier)
    train(cfg)
    before = {p: p.read_bytes() for p in (tmp_path / "logs").rglob("*") if p.is_file()}
    paths = [f"paths.log_dir={tmp_path / 'logs'}", f"paths.data_dir={tmp_path / 'data'}"]
    resume = [f"ckpt_path={earlier}"]  # resuming the earlier run with a bad value
    cases = [("train.py", [*args, *paths]) for args, _ in BATTERY]
    cases.append(("train.py", [*resume, "trainer.max_epochs=-5", *paths]))
    cases.append(("eval.py", ["ckpt_path=/no/such.ckpt", *paths]))
    expected = [key for _, key in BATTERY] + ["trainer.max_epochs=-5", "ckpt_path=/no/such"]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = dict(os.environ, WANDB_MODE="offline")
    env.pop("HYDRA_FULL_ERROR", None)
    subprocess.run(
        [sys.executable, str(ROOT / "tests" / "cli_cases.py"), "cases.json", "results.json"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=600,
    )
    results = json.loads((tmp_path / "results.json").read_text())
    for (_, args), key, (code, output) in zip(cases, expected, results):
        lines = output.strip().splitlines()
        assert code == 2, (args, output[-2000:])
        assert len(lines) <= 10, (args, output[-2000:])
        assert lines[-1].startswith("Error: ") and key in lines[-1], (args, lines[-1])
        assert "CONFIG" not in output and "Traceback" not in output, (args, output[-2000:])
    after = {p: p.read_bytes() for p in (tmp_path / "logs").rglob("*") if p.is_file()}
    assert after == before


# Hydra's composition errors, worded by slimlab.utils.errors.describe_error


def _composition_error(compose_cfg, overrides: list[str]) -> str:
    with pytest.raises(Exception) as info:
        compose_cfg(overrides)
    message = describe_error(info.value)
    assert message is not None, info.value
    return message


def test_misspelt_key_names_the_closest_valid_keys(compose_cfg) -> None:
    message = _composition_error(compose_cfg, ["trainer.max_epoch=5"])
    assert message.startswith("trainer.max_epoch is not a key of trainer")
    assert "did you mean trainer.max_epochs" in message
    assert "+trainer.max_epoch=5" in message  # how to add a new key on purpose
    message = _composition_error(compose_cfg, ["compression=prune", "compression.prune.amout=3"])
    assert "did you mean compression.prune.amount" in message


def test_unknown_group_option_lists_the_options(compose_cfg) -> None:
    message = _composition_error(compose_cfg, ["optimizer=adamm"])
    assert "optimizer=adamm is not an option" in message
    assert "configs/optimizer/adamm.yaml" in message
    assert "closest: adam, adamw" in message


def test_unparsable_override_is_named(compose_cfg) -> None:
    message = _composition_error(compose_cfg, ["trainer.max_epochs=[1"])
    assert "'trainer.max_epochs=[1' does not parse" in message


def test_config_error_is_found_in_the_cause_chain_and_crashes_are_not_bad_input() -> None:
    try:
        try:
            raise ConfigError("data.batch_size=0 is out of range")
        except ConfigError as inner:
            raise RuntimeError("wrapped by a library") from inner
    except RuntimeError as outer:
        assert describe_error(outer) == "data.batch_size=0 is out of range"
    assert describe_error(ZeroDivisionError("a bug")) is None


def test_a_value_that_does_not_resolve_is_bad_input(compose_cfg) -> None:
    cfg = compose_cfg(["trainer.max_epochs=${nope}"])
    with pytest.raises(Exception) as info:
        train(cfg)
    assert (
        describe_error(info.value) == "model.scheduler.T_max: Interpolation key 'nope' not found"
    )
