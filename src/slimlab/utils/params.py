"""Counting a network's parameters, quantized weights included."""

from __future__ import annotations

import math

from torch import nn


def count_parameters(module: nn.Module) -> int:
    """Number of weights in `module`, trainable or not, counted as the float network's.

    int8 packed weights (torch.ao) count one each, and so do 4-bit weights packed two to a
    byte (bitsandbytes): a quantized layer has as many parameters as its float original.
    """
    from torch.ao.nn.quantized.modules.conv import _ConvNd as QuantizedConvNd
    from torch.ao.nn.quantized.modules.linear import Linear as QuantizedLinear

    total = 0
    for p in module.parameters():
        packed_shape = getattr(getattr(p, "quant_state", None), "shape", None)
        total += math.prod(packed_shape) if packed_shape is not None else p.numel()
    for m in module.modules():
        if isinstance(m, QuantizedConvNd | QuantizedLinear):  # weights live outside parameters()
            weight, bias = m.weight(), m.bias()
            total += weight.numel() + (bias.numel() if bias is not None else 0)
    return int(total)
