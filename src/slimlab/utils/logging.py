"""A rank-aware logger: library code logs through it, never through print."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lightning_utilities.core.rank_zero import rank_prefixed_message, rank_zero_only


class RankedLogger(logging.LoggerAdapter):
    """Logs from rank 0 only by default; `rank=None` on a call logs from every rank, prefixed."""

    def __init__(self, name: str = __name__, rank_zero_only: bool = True) -> None:
        super().__init__(logger=logging.getLogger(name), extra=None)
        self.rank_zero_only = rank_zero_only

    def log(
        self, level: int, msg: str, *args: Any, rank: int | None = None, **kwargs: Any
    ) -> None:
        if not self.isEnabledFor(level):
            return
        current = getattr(rank_zero_only, "rank", 0)
        msg, kwargs = self.process(msg, kwargs)
        if self.rank_zero_only and rank is None:
            if current == 0:
                self.logger.log(level, msg, *args, **kwargs)
        elif rank is None or current == rank:
            self.logger.log(level, rank_prefixed_message(msg, current), *args, **kwargs)

    def process(self, msg: Any, kwargs: Mapping[str, Any]) -> tuple[Any, Mapping[str, Any]]:
        return msg, kwargs


def get_logger(name: str) -> RankedLogger:
    """Return the rank-zero-only logger for module `name`."""
    return RankedLogger(name)
