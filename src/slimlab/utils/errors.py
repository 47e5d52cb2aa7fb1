"""The one error type for bad user input, and how its message is found and worded.

`ConfigError` is what SlimLab raises for a wrong key, value or file. `describe_error` turns
any exception an entry ends with into that one message, or None for a real crash: a
ConfigError anywhere in the cause chain, or Hydra's composition errors (an unknown group
option, a misspelt key, an override that does not parse), worded the same way: the key,
the value, and what is valid (for a misspelt key, the closest valid keys).
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class ConfigError(ValueError):
    """Bad user input: the message names the key or file and says what would be valid."""


def find_config_error(exc: BaseException) -> ConfigError | None:
    """Return the ConfigError in `exc`'s cause/context chain (Hydra wraps constructor errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConfigError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The (at most `n`) candidates most like `name`, best first."""
    return difflib.get_close_matches(name, sorted(set(candidates)), n=n, cutoff=0.5)


def target_parameters(target: Any) -> list[str]:
    """The keyword arguments a `_target_` (a class or function, or its import path) accepts."""
    if isinstance(target, str):
        from hydra.utils import get_object

        try:
            target = get_object(target)
        except Exception:  # an unimportable target is reported where it is built
            return []
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds and p.name != "self"]


def unknown_key_message(full_key: str, parent: Any, override: str | None = None) -> str:
    """`<full_key> is not a key of ...`, with the closest valid keys of its parent node."""
    key = full_key.rpartition(".")[2]
    parent_key = full_key.rpartition(".")[0]
    keys = [str(k) for k in (parent.keys() if hasattr(parent, "keys") else [])]
    target = parent.get("_target_") if hasattr(parent, "get") else None
    valid = [k for k in keys if not k.startswith("_")]
    if target:
        valid += target_parameters(target)
    valid = [k for k in valid if k != key]
    where = f"{parent_key} ({target})" if target else (parent_key or "the config")
    near = closest(key, valid)
    hint = f"did you mean {' or '.join(parent_key + '.' + k if parent_key else k for k in near)}?"
    if not near:
        hint = f"valid keys are {', '.join(sorted(set(valid)))}"
    message = f"{full_key} is not a key of {where}: {hint}"
    if override:
        message += f" (to add a new key on purpose: +{override})"
    return message


def hydra_composition_message(exc: BaseException) -> str | None:
    """One message for Hydra's composition errors (unknown option or key, bad override)."""
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigKeyError

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        near = closest(option, exc.options)
        hint = f" (closest: {', '.join(near)})" if near else ""
        return (
            f"{group}={option} is not an option: there is no configs/{exc.missing_cfg_file}.yaml;"
            f" the options of {group} are {', '.join(exc.options)}{hint}"
        )
    if isinstance(exc, OverrideParseException):
        return f"the override {exc.override!r} does not parse: {str(exc).splitlines()[0]}"
    if isinstance(exc, ConfigCompositionException):
        cause = exc.__cause__
        lines = str(exc).splitlines()
        if isinstance(cause, ConfigKeyError | AttributeError) and getattr(cause, "full_key", None):
            append = next((ln for ln in lines if ln.startswith("To append")), "")
            override = append.rpartition(" use +")[2] or None
            return unknown_key_message(str(cause.full_key), cause.parent_node, override)
        detail = f": {str(cause).splitlines()[0]}" if cause is not None else ""
        return " ".join(line.strip() for line in lines[:3] if line.strip()) + detail
    return None


def interpolation_message(exc: BaseException) -> str | None:
    """One message for a config value that does not resolve (`${...}` to a missing key)."""
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    if not isinstance(exc, InterpolationResolutionError | MissingMandatoryValue):
        return None
    text = str(exc).splitlines()[0].strip()
    full_key = getattr(exc, "full_key", None)
    return f"{full_key}: {text}" if full_key else text


def describe_error(exc: BaseException) -> str | None:
    """The one-line (or few-line) message for a bad-input error, or None for a real crash."""
    error = find_config_error(exc)
    if error is not None:
        return str(error)
    return hydra_composition_message(exc) or interpolation_message(exc)


def is_rank_zero() -> bool:
    """True in the process that reports for a run (rank 0 of DDP, or the only process)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def report_and_exit(message: str) -> None:
    """Print `Error: <message>` on stderr (once, from rank 0) and exit with code 2."""
    if is_rank_zero():
        print(f"Error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


@contextmanager
def exit_on_config_error() -> Iterator[None]:
    """Turn a ConfigError raised inside the block into one message on stderr and exit code 2.

    Any other exception propagates unchanged. `HYDRA_FULL_ERROR=1` keeps the full traceback.
    """
    try:
        yield
    except Exception as exc:
        error = find_config_error(exc)
        if error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        report_and_exit(str(error))


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition` holds."""
    if not condition:
        raise ConfigError(message)
