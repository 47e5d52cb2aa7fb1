"""The eval entry: rebuild the exact network a checkpoint holds and test it.

What happens when, inside `task_wrapper` (slimlab/utils/task.py owns the run's cleanup):

1. `ckpt_path` is resolved: a file, a run folder (its best checkpoint), `best` (the best
   checkpoint of the newest run of `name`) or `latest` (its newest last.ckpt). torch's CPU
   threads are set (`threads`, slimlab/utils/threads.py).
2. The module is rebuilt from the checkpoint alone (`load_module`): its class, its pruned
   or quantized structure, its weights.
3. The data: `data=<option>` if given (split with `seed`, by default the checkpoint's own
   seed, so the test set is the one the run held out), else the data config the
   checkpoint was trained with. Loggers, callbacks and the trainer are built.
4. The config tree is printed (extras); the checkpoint is tested; metrics.json is written.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*} before Hydra composes)
from slimlab.models.base import count_parameters, load_module
from slimlab.utils.checkpoints import resolve_checkpoint
from slimlab.utils.errors import ConfigError
from slimlab.utils.instantiate import (
    build,
    instantiate_callbacks,
    instantiate_loggers,
    instantiate_trainer,
)
from slimlab.utils.logging import get_logger
from slimlab.utils.noise import quiet_structure_restore
from slimlab.utils.task import apply_extras, task_wrapper, write_summary
from slimlab.utils.threads import apply_threads

log = get_logger(__name__)


def _data_config(cfg: DictConfig, run: dict[str, Any], ckpt_path: str) -> Any:
    """The data config to test on: `data=<option>` (seeded like the run), or the run's own."""
    if cfg.get("data") is None:
        data_cfg = run.get("data")
        if data_cfg is None:
            raise ConfigError(
                f"ckpt_path={ckpt_path} stores no data config: "
                "give data=<option>, e.g. data=digits"
            )
        return OmegaConf.create(data_cfg)
    if cfg.get("seed") is None:
        seed = run.get("seed")
        if not isinstance(seed, int):
            raise ConfigError(
                f"data={cfg.data.get('_target_')} needs the seed that split the data, and "
                f"ckpt_path={ckpt_path} records none: give seed=<the training run's seed>"
            )
        with open_dict(cfg):
            cfg.seed = seed
    return cfg.data


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Test the checkpoint `cfg.ckpt_path` on its data; return (metrics, built objects)."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path is missing: give ckpt_path=<a .ckpt written by train.py, or its run "
            "folder>, ckpt_path=best or ckpt_path=latest (with name=<experiment name>)"
        )
    ckpt_path = resolve_checkpoint(
        cfg.ckpt_path, cfg.paths.log_dir, "train", cfg.name, folder_pick="best"
    )
    assert ckpt_path is not None
    apply_threads(cfg.get("threads", "auto"), cfg.get("trainer"))
    log.info(f"Loading <{ckpt_path}>")
    with quiet_structure_restore():
        model = load_module(ckpt_path, cfg.get("model_class"))

    data_cfg = _data_config(cfg, model.run_config or {}, ckpt_path)
    datamodule: L.LightningDataModule = build(data_cfg, "data")
    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    trainer: L.Trainer = instantiate_trainer(
        cfg.trainer, logger=loggers or False, callbacks=callbacks
    )
    apply_extras(cfg)
    trainer.test(model=model, datamodule=datamodule)
    metrics = dict(trainer.callback_metrics)
    if trainer.is_global_zero:
        write_summary(
            cfg,
            metrics,
            stages=("test",),
            checkpoint=ckpt_path,
            params=count_parameters(model.net),
        )
    return metrics, {"cfg": cfg, "model": model, "datamodule": datamodule, "trainer": trainer}


def main(cfg: DictConfig) -> None:
    """Hydra task: evaluate."""
    evaluate(cfg)
