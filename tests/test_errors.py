"""Bad input: one clear message naming the key and what is valid, non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import run_cli
from slimlab.train import main, train
from slimlab.utils.errors import ConfigError, find_config_error


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
    ],
)
def test_bad_values_raise_config_error_naming_the_key(compose_cfg, overrides, message) -> None:
    cfg = compose_cfg(overrides)
    with pytest.raises(Exception) as info:
        main(cfg)
    error = find_config_error(info.value)
    assert isinstance(error, ConfigError), info.value
    assert message in str(error)


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
