"""Known third-party noise is silenced message by message; anything else still shows."""

from __future__ import annotations

import logging
import warnings

import pytest

from slimlab.utils.noise import quiet_known_noise, quiet_structure_restore


def _warn_from(module: str, message: str, category: type[Warning]) -> list[str]:
    """Warnings shown when `module` warns `message` (as if from that module's code)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        warnings.warn_explicit(message, category, "x.py", 1, module=module)
    return [str(w.message) for w in caught]


def test_known_warnings_are_silenced_and_others_are_not() -> None:
    leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use ... instead."
    assert _warn_from("lightning.pytorch.utilities._pytree", leaf, FutureWarning) == []
    assert _warn_from("my.code", leaf, FutureWarning) == [leaf]  # same words, elsewhere
    observer = "Please use quant_min and quant_max to specify the range for observers."
    assert _warn_from("torch.ao.quantization.observer", observer, UserWarning) == []
    other = "torch.ao says something new"
    assert _warn_from("torch.ao.quantization.observer", other, UserWarning) == [other]


def test_observer_warning_is_silenced_only_while_restoring() -> None:
    message = "must run observer before calling calculate_qparams. Returning default values."
    observer = "torch.ao.quantization.observer"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_structure_restore():
            warnings.warn_explicit(message, UserWarning, "x.py", 1, observer)
        assert caught == []
        warnings.warn_explicit(message, UserWarning, "x.py", 1, observer)
        assert len(caught) == 1


@pytest.mark.parametrize(
    ("logger", "noise"),
    [
        ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging, try it"),
        ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels"),
    ],
)
def test_known_log_lines_are_dropped_and_others_kept(caplog, logger: str, noise: str) -> None:
    quiet_known_noise()
    with caplog.at_level(logging.INFO):
        logging.getLogger(logger).warning(noise)
        logging.getLogger(logger).warning("something that matters")
    assert [r.getMessage() for r in caplog.records] == ["something that matters"]
