"""Third-party messages every run shows that say nothing about the run, silenced one by one.

Each filter names one message (and the module or logger it comes from), never a whole
category: a new warning, or the same words from elsewhere, still shows. What stays on
purpose: torch's notices that quantized tensors are deprecated and (when it loads them)
that TypedStorage is; they concern the int8 stack itself (docs/quantization.md).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (logger name, message start): INFO/WARNING records dropped at their own logger
_LOG_NOISE = (
    # Lightning advertises its cloud logger and model registry when a Trainer is built
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud "),
    # bitsandbytes on CPUs with AVX512-BF16: an optional kernel package is not installed
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)
# (message regex, category, module regex): Python warnings
_WARNING_NOISE = (
    # Lightning 2.6's own _pytree helper uses a torch class that torch has deprecated
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
    ),
    # torch's default x86 QAT qconfig still passes reduce_range to its own observers
    (
        r"Please use quant_min and quant_max to specify the range for observers",
        UserWarning,
        r"torch\.ao\.quantization\.observer",
    ),
)
# only while a checkpoint's structure is replayed (see quiet_structure_restore)
_RESTORE_NOISE = (
    r"must run observer before calling calculate_qparams",
    UserWarning,
    r"torch\.ao\.quantization\.observer",
)


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of `starts`."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_known_noise() -> None:
    """Install the filters above (safe to call again)."""
    for message, category, module in _WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, start in _LOG_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and start in f.starts for f in logger.filters):
            logger.addFilter(_DropMessages((start,)))


@contextmanager
def quiet_structure_restore() -> Iterator[None]:
    """Silence torch.ao's 'observer never ran' warning while a checkpoint's network is rebuilt.

    Rebuilding an int8 network converts a freshly prepared one whose observers never saw
    data; its real weights and ranges load right after. Elsewhere the warning still shows.
    """
    message, category, module = _RESTORE_NOISE
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield
