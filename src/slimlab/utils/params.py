"""Counting a network's parameters, quantized weights included."""

from __future__ import annotations

import math

import torch
from torch import nn

INT8_DTYPES = (torch.int8, torch.uint8)


def count_parameters(module: nn.Module) -> int:
    """Number of weights in `module`, trainable or not, counted as the float network's.

    int8 weights count one each, and so do 4-bit weights packed two to a byte (bitsandbytes):
    a quantized layer has as many parameters as its float original. A QAT-converted graph
    (PT2E) holds its int8 weights as buffers (`_frozen_param<i>`), not parameters: every int8
    buffer of a `torch.fx.GraphModule` is counted.
    """
    total = 0
    for p in module.parameters():
        packed_shape = getattr(getattr(p, "quant_state", None), "shape", None)
        total += math.prod(packed_shape) if packed_shape is not None else p.numel()
    for m in module.modules():
        if isinstance(m, torch.fx.GraphModule):
            total += sum(b.numel() for b in m.buffers(recurse=False) if b.dtype in INT8_DTYPES)
    return int(total)
