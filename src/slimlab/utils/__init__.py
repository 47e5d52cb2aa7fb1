"""Small shared helpers."""

from slimlab.utils.errors import ConfigError, exit_on_config_error, require
from slimlab.utils.logging import RankedLogger, get_logger

__all__ = ["ConfigError", "RankedLogger", "exit_on_config_error", "get_logger", "require"]
