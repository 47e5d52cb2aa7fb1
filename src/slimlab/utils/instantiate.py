"""Build callbacks and loggers from their config groups, and log hyper-parameters."""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from slimlab.utils.errors import ConfigError
from slimlab.utils.logging import get_logger
from slimlab.utils.params import count_parameters

log = get_logger(__name__)


def _instantiate_group(cfg: DictConfig | None, group: str, kind: type) -> list[Any]:
    objects: list[Any] = []
    if not cfg:
        return objects
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{group} must be a mapping of name -> config, got {cfg!r}")
    for name, conf in cfg.items():
        if conf is None:
            continue
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            raise ConfigError(
                f"{group}.{name} has no _target_: each entry of {group} must be a config with "
                f"_target_ naming a {kind.__name__} class (or null to switch it off)"
            )
        log.info(f"Instantiating {group[:-1] if group.endswith('s') else group} <{conf._target_}>")
        obj = instantiate(conf)
        if not isinstance(obj, kind):
            raise ConfigError(f"{group}.{name} built {type(obj).__name__}, not a {kind.__name__}")
        objects.append(obj)
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """Build every callback in the `callbacks` (or `compression`) mapping."""
    return _instantiate_group(cfg, "callbacks", Callback)


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Build every logger in the `logger` mapping."""
    return _instantiate_group(cfg, "logger", Logger)


def log_hyperparameters(cfg: DictConfig, model: Any, loggers: list[Logger]) -> None:
    """Send the full resolved config and the parameter counts to every logger."""
    if not loggers:
        return
    params = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    assert isinstance(params, dict)
    params["model/params/total"] = count_parameters(model)
    params["model/params/trainable"] = sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    params["model/params/net"] = count_parameters(model.net)
    for logger in loggers:
        logger.log_hyperparams(params)
