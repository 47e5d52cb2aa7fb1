"""The train entry: check the config, build, fit, test on the best checkpoint, return the metric.

What happens when, inside `task_wrapper` (slimlab/utils/task.py owns the run's cleanup):

1. Checks that need nothing built: train/test flags, the seed, the checkpoint to resume
   (`ckpt_path`: a file, a run folder, `latest` or `best`). torch's CPU threads are set
   (`threads`, slimlab/utils/threads.py).
2. Build, in this order: datamodule; model (its config's own `_recursive_` decides whether
   Hydra builds `net`, `optimizer`, `scheduler` first, as lightning-hydra-template modules
   expect); the optimizer and scheduler on a dummy parameter (torch checks their values);
   hyper-parameters a checkpoint could not store; callbacks; compression callbacks;
   loggers; trainer. Constructors check their arguments, and a library's complaint is
   reported with its config key. Nothing heavy has run yet, and nothing is printed.
3. The config tree is printed (extras) and hyper-parameters are logged.
4. fit, resuming from `ckpt_path`; when that checkpoint has nothing left to train, the run
   says so and validates it instead.
5. test: this run's best checkpoint (or the resumed one when nothing was trained).
6. metrics.json (rank 0): val/test metrics, this run's best, last and tested checkpoints,
   params, wall time, CPU threads, the compression report.
7. `main` returns `optimized_metric` for sweeps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*} before Hydra composes)
from slimlab.callbacks.optuna_pruning import end_if_pruned
from slimlab.callbacks.plain_hparams import PlainHyperparameters, check_hparams
from slimlab.compression import check_compression_order
from slimlab.models.base import count_parameters
from slimlab.utils.checkpoints import (
    nothing_left_to_train,
    resolve_checkpoint,
    training_progress,
)
from slimlab.utils.ddp import distributed_job, install_hydra_ddp_launcher
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.instantiate import (
    build,
    check_optimizer_config,
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_trainer,
)
from slimlab.utils.logging import get_logger
from slimlab.utils.task import apply_extras, run_config, task_wrapper, write_summary
from slimlab.utils.threads import apply_threads

log = get_logger(__name__)


def _checkpoint_epoch(path: str | None) -> int | None:
    if not path:
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def _net_or_module(model: L.LightningModule) -> torch.nn.Module:
    net = getattr(model, "net", None)
    return net if isinstance(net, torch.nn.Module) else model


def log_hyperparameters(
    run: dict[str, Any], model: L.LightningModule, loggers: list[Logger]
) -> None:
    """Send the resolved config and the parameter counts to every logger (any module)."""
    if not loggers:
        return
    params = dict(run)
    params["model/params/total"] = count_parameters(model)
    params["model/params/trainable"] = sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    params["model/params/net"] = count_parameters(_net_or_module(model))
    for logger in loggers:
        logger.log_hyperparams(params)


def _this_run(path: str | None, output_dir: str) -> str | None:
    """`path` if it is an existing file inside this run's folder, else None."""
    if not path or not Path(path).is_file():
        return None
    inside = Path(path).resolve().is_relative_to(Path(output_dir).resolve())
    return str(path) if inside else None


def last_checkpoint(trainer: L.Trainer, output_dir: str) -> str | None:
    """The newest checkpoint this run wrote that continues it: a `save_last` file or the
    file of a checkpoint callback that monitors nothing (`last.ckpt` in our configs)."""
    candidates = []
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            candidates.append(cb.last_model_path)
            if cb.monitor is None:
                candidates.append(cb.best_model_path)
    found = [p for p in (_this_run(c, output_dir) for c in candidates) if p]
    return max(found, key=lambda p: Path(p).stat().st_mtime) if found else None


def _check_seed(seed: Any) -> None:
    require(
        seed is None or (isinstance(seed, int) and not isinstance(seed, bool)),
        f"seed={seed!r} is not an integer: give an integer seed, or seed=null for none",
    )


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (and test) the model `cfg` describes; return (metrics, built objects)."""
    require(
        cfg.get("train") or cfg.get("test"),
        "train=false and test=false leaves nothing to do: set train=true or test=true",
    )
    _check_seed(cfg.get("seed"))
    ckpt_path = resolve_checkpoint(
        cfg.get("ckpt_path"), cfg.paths.log_dir, cfg.task_name, cfg.get("name", "default")
    )
    threads = apply_threads(cfg.get("threads", "auto"), cfg.get("trainer"))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    install_hydra_ddp_launcher()

    run = run_config(cfg)
    datamodule: L.LightningDataModule = build(cfg.data, "data")
    model: L.LightningModule = build(cfg.model, "model")  # honours the config's _recursive_
    model.run_config = run
    check_optimizer_config(cfg.model)
    check_hparams(model, datamodule, run)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    callbacks += instantiate_callbacks(cfg.get("compression"), group="compression")
    check_compression_order(callbacks)
    callbacks.append(PlainHyperparameters(run))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = instantiate_trainer(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    if model.example_input_array is not None:  # Lightning's summary skips the precision cast
        model.example_input_array = trainer.precision_plugin.convert_input(
            model.example_input_array
        )
    finished = None
    if cfg.get("train") and ckpt_path is not None:
        finished = nothing_left_to_train(ckpt_path, trainer.max_epochs, trainer.max_steps)
    objects = {
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "callbacks": callbacks,
        "logger": loggers,
        "trainer": trainer,
    }
    log.info(
        f"Built <{type(datamodule).__name__}>, <{type(model).__name__}>, "
        f"{len(callbacks)} callbacks, {len(loggers)} logger(s), trainer"
    )
    apply_extras(cfg)
    log_hyperparameters(run, model, loggers)

    start = time.perf_counter()
    metrics: dict[str, Any] = {}
    trains = bool(cfg.get("train")) and finished is None
    if trains:
        log.info("Starting training")
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
        if end_if_pruned(callbacks, trainer):  # a sweep's pruner stopped it; rank 0 raised
            return dict(trainer.callback_metrics), objects
        metrics.update(trainer.callback_metrics)
    elif finished is not None:
        log.warning(f"Nothing left to train: {finished}. Validating and testing it instead.")
        trainer.validate(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(trainer.callback_metrics)

    # read before testing: trainer.test restores the callbacks' state from the tested file
    best_path = None
    if trains and trainer.checkpoint_callback is not None:
        best_path = _this_run(trainer.checkpoint_callback.best_model_path, cfg.paths.output_dir)
    last_path = last_checkpoint(trainer, cfg.paths.output_dir)
    tested = best_path if trains else ckpt_path  # None: the weights in memory
    if cfg.get("test"):
        log.info("Starting testing")
        if not tested:
            log.warning("No best checkpoint found: testing the current weights")
        trainer.test(model=model, datamodule=datamodule, ckpt_path=tested or None)
        metrics.update(trainer.callback_metrics)
    wall_time = time.perf_counter() - start

    if trainer.is_global_zero:
        fields: dict[str, Any] = {
            "best_epoch": _checkpoint_epoch(best_path),
            "best_checkpoint": best_path,
            "last_checkpoint": last_path,
            "tested_checkpoint": tested if cfg.get("test") else None,
            "resumed_from": ckpt_path,
            "params": count_parameters(_net_or_module(model)),
            "wall_time_s": round(wall_time, 3),
            "threads": threads,
            "epochs_run": trainer.current_epoch,
        }
        if finished is not None:
            fields["nothing_left_to_train"] = finished
            fields["epochs_run"] = training_progress(ckpt_path)["epochs"]
        report = getattr(model, "compression_report", None)
        if report:
            fields["compression"] = report
        write_summary(cfg, metrics, **fields)
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
    """Hydra task: train, return the optimized metric(s) (for sweeps)."""
    with distributed_job():
        metrics, _ = train(cfg)
    return optimized_metric(cfg, metrics)
