"""The one error type for bad user input, and how entries report it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


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
        if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
            print(f"Error: {error}", file=sys.stderr, flush=True)  # once, not per DDP rank
        sys.exit(2)


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition` holds."""
    if not condition:
        raise ConfigError(message)
