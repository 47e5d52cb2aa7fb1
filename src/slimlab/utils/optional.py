"""Heavy optional packages, imported inside the function that needs them."""

from __future__ import annotations

import importlib
from types import ModuleType


def import_optional(module: str, extra: str) -> ModuleType:
    """Import `module`, or fail saying which extra of SlimLab installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f'{module} is not installed: pip install -e ".[{extra}]" (or pip install {module})'
        ) from exc
