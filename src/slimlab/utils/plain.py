"""Plain data: what checkpoints, hyper-parameters and reports may hold (no OmegaConf)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def to_plain(value: Any) -> Any:
    """Resolve OmegaConf nodes into plain dicts/lists, also inside dicts, lists and tuples
    (checkpoints must not pickle them)."""
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if type(value) is tuple:
        return tuple(to_plain(v) for v in value)
    return value


def is_plain(value: Any) -> bool:
    """True when `value` holds only dict, list, tuple, str, int, float, bool and None."""
    if isinstance(value, dict):
        return all(isinstance(k, str | int) and is_plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(is_plain(v) for v in value)
    return value is None or isinstance(value, bool | int | float | str)
