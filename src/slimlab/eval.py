"""The eval entry: rebuild the exact network a checkpoint holds and test it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*} before Hydra composes)
from slimlab.models.base import count_parameters, load_module
from slimlab.train import apply_extras, finish_loggers
from slimlab.utils.checkpoints import resolve_checkpoint
from slimlab.utils.errors import ConfigError
from slimlab.utils.instantiate import instantiate_callbacks, instantiate_loggers
from slimlab.utils.logging import get_logger
from slimlab.utils.run_files import write_json_atomic

log = get_logger(__name__)


def check_ckpt_given(cfg: DictConfig) -> None:
    """Fail clearly when eval.py was not told which checkpoint to test."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path is missing: give ckpt_path=<path to a .ckpt written by train.py> "
            "or ckpt_path=latest (with name=<experiment name>)"
        )


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test the checkpoint `cfg.ckpt_path` on its data; return (metrics, built objects)."""
    check_ckpt_given(cfg)
    ckpt_path = resolve_checkpoint(cfg.ckpt_path, cfg.paths.log_dir, "train", cfg.name)
    assert ckpt_path is not None
    log.info(f"Loading <{ckpt_path}>")
    model = load_module(ckpt_path, cfg.get("model_class"))

    data_cfg = cfg.get("data")
    if data_cfg is None:
        data_cfg = (model.run_config or {}).get("data")
        if data_cfg is None:
            raise ConfigError(
                f"ckpt_path={ckpt_path} stores no data config: "
                "give data=<option>, e.g. data=digits"
            )
    log.info(f"Instantiating datamodule <{data_cfg['_target_']}>")
    datamodule: L.LightningDataModule = instantiate(data_cfg)
    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    try:
        trainer.test(model=model, datamodule=datamodule)
        metrics = dict(trainer.callback_metrics)
        if trainer.is_global_zero:
            write_json_atomic(
                Path(cfg.paths.output_dir) / "metrics.json",
                {
                    "test": {k[5:]: v for k, v in metrics.items() if k.startswith("test/")},
                    "checkpoint": ckpt_path,
                    "params": count_parameters(model.net),
                },
            )
    finally:
        finish_loggers()
    return metrics, {"cfg": cfg, "model": model, "datamodule": datamodule, "trainer": trainer}


def main(cfg: DictConfig) -> None:
    """Hydra task: extras, then evaluate."""
    check_ckpt_given(cfg)
    apply_extras(cfg)
    evaluate(cfg)
