"""The QAT stack: torch.ao.quantization FX graph mode, behind five functions.

`slimlab.compression.quantization` (the QAT callback and its restorer) calls only these:
`use_engine`, `check_quantizable`, `prepare_qat`, `set_qat_state`, `convert_int8`. Moving QAT
to another stack (e.g. torchao's PT2E) means writing this file again with the same five
functions; docs/quantization.md says why this one was chosen.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from slimlab.compression.measure import describe_input, measuring
from slimlab.models.base import call_net
from slimlab.utils.errors import ConfigError, require

BACKENDS = ("x86", "fbgemm", "qnnpack")  # quantized CPU engines the int8 model can run on
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def use_engine(backend: str, key: str = "compression.qat.backend") -> None:
    """Check `backend` and make it torch's quantized engine (int8 kernels pack per engine)."""
    require(
        backend in BACKENDS,
        f"{key}={backend!r} is not a supported backend: give one of {list(BACKENDS)}",
    )
    engines = torch.backends.quantized.supported_engines
    require(
        backend in engines,
        f"{key}={backend!r} is not built into this torch: it supports {engines}",
    )
    if torch.backends.quantized.engine != backend:
        torch.backends.quantized.engine = backend


def check_quantizable(net: nn.Module) -> None:
    """Fail clearly when `net` has no Conv or Linear layer for QAT to quantize."""
    require(
        any(isinstance(m, QUANTIZABLE) for m in net.modules()),
        f"model.net ({type(net).__name__}) has no quantizable layer (Conv1d/2d/3d or Linear): "
        "QAT has nothing to quantize; remove compression.qat or use a network with such layers",
    )


def _qconfig_mapping(backend: str) -> Any:
    """Per-channel symmetric int8 weights, per-tensor affine uint8 activations."""
    from torch.ao.quantization import QConfig, get_default_qat_qconfig_mapping
    from torch.ao.quantization.fake_quantize import FusedMovingAvgObsFakeQuantize
    from torch.ao.quantization.observer import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )

    activation = FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        # fbgemm/x86 kernels use 7-bit activations to avoid int16 overflow without VNNI
        reduce_range=backend in ("x86", "fbgemm"),
    )
    weight = FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
    )
    # the backend's mapping keeps its fixed-range settings for sigmoid, tanh, softmax, ...;
    # embeddings (token ids in, no int8 activation kernel) stay float
    mapping = get_default_qat_qconfig_mapping(backend).set_global(QConfig(activation, weight))
    return mapping.set_object_type(nn.Embedding, None)


def _positional(net: nn.Module, example_input: Any) -> tuple:
    """The example as positional arguments of `net.forward` (a dict maps by parameter name)."""
    if not isinstance(example_input, Mapping):
        return (example_input,)
    names = list(inspect.signature(net.forward).parameters)
    leading = names[: len(example_input)]
    if set(leading) != set(example_input):
        raise ConfigError(
            f"model.net ({type(net).__name__}) takes {names}, but example_input_array holds "
            f"{sorted(example_input)}: for QAT the dict must name forward's first parameters"
        )
    return tuple(example_input[name] for name in leading)


def prepare_qat(net: nn.Module, example_input: Any, backend: str) -> nn.Module:
    """Trace `net`, fuse conv/bn/relu and insert fake quantization (shares `net`'s weights)."""
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    use_engine(backend)
    was_training = net.training
    example = _positional(net, example_input)
    try:
        prepared = prepare_qat_fx(net.train(), _qconfig_mapping(backend), example)
    except Exception as exc:  # torch.fx raises many types for untraceable Python
        net.train(was_training)
        raise ConfigError(
            f"model.net ({type(net).__name__}) cannot be prepared for QAT by torch.fx: {exc}. "
            "Its forward must be traceable: no data-dependent Python control flow, and it must "
            "return a tensor or a dict of tensors"
        ) from exc
    prepared.train(was_training)
    try:  # once, ranges untouched: fails here, not in the first QAT batch
        with measuring(prepared):
            call_net(prepared, example_input)
    except Exception as exc:
        raise ConfigError(
            f"model.net ({type(net).__name__}) prepared for QAT fails on its example input "
            f"{describe_input(example_input)} ({type(exc).__name__}: {exc}): torch.fx QAT "
            "observes every input of a quantized op, so integer inputs (token ids, masks) may "
            "only reach embeddings and comparisons, not arithmetic with float activations"
        ) from exc
    return prepared


def set_qat_state(
    net: nn.Module, fake_quant: bool, observe: bool, freeze_bn: bool | None = None
) -> None:
    """Switch fake quantization, observers and (unless None) batch-norm statistics updates.

    Only call it with `freeze_bn` while training: unfreezing puts the fused batch norms in
    training mode.
    """
    from torch.ao.nn.intrinsic import qat as nniqat
    from torch.ao.quantization import (
        disable_fake_quant,
        disable_observer,
        enable_fake_quant,
        enable_observer,
    )

    net.apply(enable_fake_quant if fake_quant else disable_fake_quant)
    net.apply(enable_observer if observe else disable_observer)
    if freeze_bn is not None:
        net.apply(nniqat.freeze_bn_stats if freeze_bn else nniqat.update_bn_stats)


def convert_int8(net: nn.Module, backend: str) -> nn.Module:
    """A CPU int8 copy of the QAT-prepared `net` (the prepared network is left as it was)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    use_engine(backend)
    return convert_fx(copy.deepcopy(net).cpu().eval())
