"""Build objects from config nodes so that a bad value is reported by its config key.

`build` wraps Hydra's `instantiate`: a `ConfigError` from a constructor passes through; a
library's own complaint (Lightning's MisconfigurationException, torch's or Lightning's
ValueError, an argument the target does not take, a `_target_` that does not import)
becomes a ConfigError that names the key, e.g. `trainer.max_epochs=-5: ...`. Anything else
is a real crash and keeps its traceback.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from slimlab.utils.errors import ConfigError, find_config_error, require, target_parameters
from slimlab.utils.errors import unknown_key_message as _unknown_key_message
from slimlab.utils.logging import get_logger

log = get_logger(__name__)


def _library_config_error(exc: BaseException) -> bool:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(exc, MisconfigurationException | ValueError)


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def explain(exc: BaseException, node: Any, key: str) -> str:
    """`<key>.<arg>=<value>: <the library's message>`, naming the arguments it mentions."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    target = node.get("_target_") if hasattr(node, "get") else None
    args = [str(k) for k in (node.keys() if hasattr(node, "keys") else []) if str(k)[0] != "_"]
    named = [a for a in args if re.search(rf"(?<![\w.]){re.escape(a)}(?!\w)", text, re.I)]
    if not named and isinstance(exc, ZeroDivisionError):  # the integer arguments that are 0
        named = [a for a in args if type(_value(node, a)) is int and _value(node, a) == 0]
    if named:
        where = ", ".join(f"{key}.{a}={_value(node, a)}" for a in named)
    else:  # show the scalar arguments: the culprit is among them
        scalars = [f"{a}={_value(node, a)!r}" for a in args if _is_scalar(_value(node, a))]
        where = f"{key} ({', '.join([str(target or ''), *scalars]).strip(', ')})"
    return f"{where}: {text}"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _value(node: Any, arg: str) -> Any:
    try:
        return node[arg]
    except Exception:
        return "?"


def _binding_error(node: DictConfig, key: str, kwargs: dict[str, Any]) -> str | None:
    """Why the node's arguments do not fit its target's signature, or None if they do."""
    target = node.get("_target_")
    try:
        signature = inspect.signature(get_object(target))
    except Exception:
        return None
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    accepted = set(target_parameters(target))
    for arg in [*(str(k) for k in node if not str(k).startswith("_")), *kwargs]:
        if arg not in accepted:
            return _unknown_key_message(f"{key}.{arg}", node)
    return None


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """Instantiate config `node` found at config key `key`; bad values raise ConfigError."""
    try:
        return instantiate(node, **kwargs)
    except Exception as exc:
        if find_config_error(exc) is not None:
            raise
        cause = _root_cause(exc)
        if isinstance(cause, TypeError):
            message = _binding_error(node, key, kwargs)
            if message is not None:
                raise ConfigError(message) from exc
            raise
        text = " ".join(str(cause).split())
        if isinstance(cause, ImportError) or (
            isinstance(exc, InstantiationException) and cause is exc
        ):
            message = f"{key}._target_={node.get('_target_')} does not import: {text}"
            raise ConfigError(message) from exc
        if isinstance(
            cause, OmegaConfBaseException
        ):  # e.g. an interpolation that does not resolve
            raise ConfigError(f"{key}: {text}") from exc
        if _library_config_error(cause):
            raise ConfigError(explain(cause, node, key)) from exc
        raise


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
        log.debug(f"Instantiating {group}.{name} <{conf._target_}>")
        obj = build(conf, f"{group}.{name}")
        if not isinstance(obj, kind):
            raise ConfigError(f"{group}.{name} built {type(obj).__name__}, not a {kind.__name__}")
        objects.append(obj)
    return objects


def instantiate_callbacks(cfg: DictConfig | None, group: str = "callbacks") -> list[Callback]:
    """Build every callback in the `callbacks` (or `compression`) mapping."""
    return _instantiate_group(cfg, group, Callback)


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Build every logger in the `logger` mapping."""
    return _instantiate_group(cfg, "logger", Logger)


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """Fail in one line when `trainer.accelerator` names hardware this machine lacks."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU and this machine has none "
            "(torch.cuda.is_available() is False): use trainer=cpu, or trainer=ddp_sim for "
            "DDP on CPU processes"
        )
    devices = trainer_cfg.get("devices")
    if (
        accelerator in ("gpu", "cuda")
        and isinstance(devices, int)
        and not isinstance(devices, bool)
    ):
        available = torch.cuda.device_count()
        require(
            devices <= available,
            f"trainer.devices={devices} asks for {devices} GPUs and this machine has "
            f"{available}: give trainer.devices={available} (or -1 for all)",
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.accelerator=mps needs Apple-silicon MPS and this machine has none: "
            "use trainer=cpu"
        )


def instantiate_trainer(trainer_cfg: DictConfig, **kwargs: Any) -> Any:
    """Build the Lightning Trainer from `trainer_cfg`, naming the key of a bad value."""
    check_accelerator(trainer_cfg)
    log.debug(f"Instantiating trainer <{trainer_cfg._target_}>")
    return build(trainer_cfg, "trainer", **kwargs)


def _is_torch_class(target: Any, base: type) -> bool:
    try:
        obj = get_object(str(target))
    except Exception:
        return False
    return isinstance(obj, type) and issubclass(obj, base)


def check_optimizer_config(model_cfg: DictConfig, key: str = "model") -> None:
    """Build `model.optimizer` / `model.scheduler` (torch partials) on a dummy parameter.

    torch checks its own arguments (a negative learning rate, betas outside [0, 1), a
    plateau factor >= 1) when an optimizer or scheduler is built, which a module does only
    inside `fit`, and a scheduler's arithmetic (a step size or T_max of 0) fails at its
    first step, after an epoch. Building and stepping them once here reports those values
    before anything else runs.
    """
    opt_cfg = model_cfg.get("optimizer")
    if not isinstance(opt_cfg, DictConfig) or not opt_cfg.get("_partial_"):
        return
    if not _is_torch_class(opt_cfg.get("_target_"), torch.optim.Optimizer):
        return
    dummy = [nn.Parameter(torch.zeros(1))]
    factory = build(opt_cfg, f"{key}.optimizer")
    optimizer = _call_partial(factory, opt_cfg, f"{key}.optimizer", params=dummy)
    sched_cfg = model_cfg.get("scheduler")
    if not isinstance(sched_cfg, DictConfig) or not sched_cfg.get("_partial_"):
        return
    if not _is_torch_class(sched_cfg.get("_target_"), torch.optim.lr_scheduler.LRScheduler):
        return
    factory = build(sched_cfg, f"{key}.scheduler")
    scheduler = _call_partial(factory, sched_cfg, f"{key}.scheduler", optimizer=optimizer)
    optimizer.step()
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    _call_partial(
        scheduler.step, sched_cfg, f"{key}.scheduler", **({"metrics": 0.0} if plateau else {})
    )


def _call_partial(factory: Any, node: DictConfig, key: str, **kwargs: Any) -> Any:
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(_binding_error(node, key, kwargs) or explain(exc, node, key)) from exc
    except (ValueError, ZeroDivisionError) as exc:
        raise ConfigError(explain(exc, node, key)) from exc
