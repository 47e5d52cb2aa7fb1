"""Loading Hugging Face models and tokenizers by name, with one clear error when neither a
local folder, the cache nor the Hub can provide them (the model adapter and the text data)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from slimlab.utils.errors import ConfigError

T = TypeVar("T")


def from_hub(load: Callable[[str], T], name: str, key: str, offline_option: str) -> T:
    """Return `load(name)` (a `from_pretrained`); a name that cannot be loaded raises one
    ConfigError naming `key`, the name, why, how to get it, and `offline_option` (what to
    configure instead to run without it)."""
    try:
        return load(name)
    except OSError as exc:  # transformers reports missing files, no network and bad ids so
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{key}={name!r} could not be loaded: it is not a local folder, not in the Hugging "
            f"Face cache, or the Hub could not provide it ({reason}). Connect to the internet "
            f"and run again (it is downloaded once into the cache), or download it first with "
            f"`hf download {name}` and run with HF_HUB_OFFLINE=1, or give the path of a local "
            f"folder saved with save_pretrained; or, to run offline without it, {offline_option}"
        ) from exc
