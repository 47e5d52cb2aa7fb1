"""eval.py: ckpt_path as a file, a run folder or `best`; data=<option> split like the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from conftest import compose_config
from slimlab.eval import evaluate
from slimlab.train import train
from slimlab.utils.errors import ConfigError


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """One short digits run in logs/train/default/runs/a; (its folder, its metrics.json)."""
    root = tmp_path_factory.mktemp("trained")
    cfg = compose_config(
        root,
        ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "logger=none"]
        + ["callbacks.rich_progress_bar=null", "seed=7"],
    )
    cfg.paths.output_dir = str(root / "logs" / "train" / "default" / "runs" / "a")
    train(cfg)
    folder = Path(cfg.paths.output_dir)
    return folder, json.loads((folder / "metrics.json").read_text())


def _eval(tmp_path: Path, trained, overrides: list[str]) -> dict:
    cfg = compose_config(tmp_path, overrides, config_name="eval")
    with open_dict(cfg):
        cfg.paths.log_dir = str(trained[0].parents[3])
    evaluate(cfg)
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_data_option_is_split_with_the_checkpoints_seed(tmp_path, trained) -> None:
    """configs/eval.yaml had no `seed` for the data configs' ${seed}; the run used seed=7."""
    best = trained[1]["best_checkpoint"]
    summary = _eval(tmp_path, trained, [f"ckpt_path={best}", "data=digits"])
    assert summary["test"]["acc"] == pytest.approx(trained[1]["test"]["acc"], abs=1e-6)


@pytest.mark.parametrize("ckpt", ["best", "folder"])
def test_best_and_run_folder_name_the_runs_best_checkpoint(tmp_path, trained, ckpt) -> None:
    ckpt_path = "best" if ckpt == "best" else str(trained[0])
    summary = _eval(tmp_path, trained, [f"ckpt_path={ckpt_path}"])
    assert summary["checkpoint"] == trained[1]["best_checkpoint"]
    assert summary["test"]["acc"] == pytest.approx(trained[1]["test"]["acc"], abs=1e-6)


def test_bad_path_fails_before_the_config_tree_and_leaves_no_folder(tmp_path, capsys) -> None:
    cfg = compose_config(tmp_path, ["ckpt_path=/no/such.ckpt"], config_name="eval")
    with open_dict(cfg):
        cfg.extras.print_config = True
    Path(cfg.paths.output_dir).mkdir(parents=True)  # as Hydra would have made it
    with pytest.raises(ConfigError, match=r"^ckpt_path=/no/such.ckpt does not exist"):
        evaluate(cfg)
    assert "CONFIG" not in capsys.readouterr().out
    assert not Path(cfg.paths.output_dir).exists()
