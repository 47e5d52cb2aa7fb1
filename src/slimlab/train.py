"""The train entry: compose, instantiate, fit, test on the best checkpoint, return the metric."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*} before Hydra composes)
from slimlab.callbacks.optuna_pruning import end_if_pruned
from slimlab.models.base import count_parameters
from slimlab.utils.checkpoints import resolve_checkpoint
from slimlab.utils.ddp import distributed_job, install_hydra_ddp_launcher
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.instantiate import (
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
)
from slimlab.utils.logging import get_logger
from slimlab.utils.rich_utils import print_config_tree
from slimlab.utils.run_files import write_json_atomic

log = get_logger(__name__)


def apply_extras(cfg: DictConfig) -> None:
    """Optional start-up utilities from the `extras` group."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        output_dir = cfg.paths.get("output_dir")
        print_config_tree(
            cfg, save_to=Path(output_dir) / "config_tree.log" if output_dir else None
        )


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain containers (stored in checkpoints, logged)."""
    keys = [k for k in cfg if k != "hydra"]
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
    assert isinstance(plain, dict)
    return plain


def finish_loggers() -> None:
    """End the W&B run of this job (a multirun starts the next job's own run)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _checkpoint_epoch(path: str) -> int | None:
    if not path:
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (and test) the model `cfg` describes; return (metrics, built objects)."""
    require(
        cfg.get("train") or cfg.get("test"),
        "train=false and test=false leaves nothing to do: set train=true or test=true",
    )
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    install_hydra_ddp_launcher()
    ckpt_path = resolve_checkpoint(
        cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name, cfg.get("name", "default")
    )

    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    log.info(f"Instantiating model <{cfg.model._target_}>")
    model = instantiate(cfg.model, _recursive_=False)
    model.run_config = run_config(cfg)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    callbacks += instantiate_callbacks(cfg.get("compression"))
    loggers = instantiate_loggers(cfg.get("logger"))
    log.info(f"Instantiating trainer <{cfg.trainer._target_}>")
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    objects = {
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "callbacks": callbacks,
        "logger": loggers,
        "trainer": trainer,
    }
    log_hyperparameters(cfg, model, loggers)

    start = time.perf_counter()
    metrics: dict[str, Any] = {}
    try:
        if cfg.get("train"):
            log.info("Starting training")
            trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
            if end_if_pruned(callbacks, trainer):  # a sweep's pruner stopped it; rank 0 raised
                return dict(trainer.callback_metrics), objects
        metrics.update(trainer.callback_metrics)

        best_path = ""
        if trainer.checkpoint_callback is not None:
            best_path = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        if cfg.get("test"):
            log.info("Starting testing")
            if not best_path:
                log.warning("No best checkpoint found: testing the current weights")
            trainer.test(model=model, datamodule=datamodule, ckpt_path=best_path or None)
            metrics.update(trainer.callback_metrics)
        wall_time = time.perf_counter() - start

        if trainer.is_global_zero:
            last_path = next(
                (c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor is None),
                "",
            )
            summary = {
                "val": {k[4:]: v for k, v in metrics.items() if k.startswith("val/")},
                "test": {k[5:]: v for k, v in metrics.items() if k.startswith("test/")},
                "best_epoch": _checkpoint_epoch(best_path),
                "best_checkpoint": best_path or None,
                "last_checkpoint": last_path or None,
                "params": count_parameters(model.net),
                "wall_time_s": round(wall_time, 3),
                "epochs_run": trainer.current_epoch,
            }
            report = getattr(model, "compression_report", None)
            if report:
                summary["compression"] = report
            write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", summary)
    finally:
        finish_loggers()
    return metrics, objects


def optimized_metric(cfg: DictConfig, metrics: dict[str, Any]) -> float | list[float] | None:
    """The value of `cfg.optimized_metric` (what sweeps optimize), or None if unset.

    A list of metric names (a multi-objective search) gives the list of their values.
    """
    names = cfg.get("optimized_metric")
    if not names:
        return None
    listed = not isinstance(names, str)
    names = list(names) if listed else [names]
    missing = [name for name in names if name not in metrics]
    if missing:
        raise ConfigError(
            f"optimized_metric={missing[0]} was not logged by this run: logged metrics are "
            f"{sorted(metrics)}"
        )
    values = [float(metrics[name]) for name in names]
    return values if listed else values[0]


def main(cfg: DictConfig) -> float | list[float] | None:
    """Hydra task: extras, train, return the optimized metric (for sweeps)."""
    apply_extras(cfg)
    with distributed_job():
        metrics, _ = train(cfg)
    return optimized_metric(cfg, metrics)
