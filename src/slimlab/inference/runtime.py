"""Run a network the same way whatever holds it: a torch module, an exported program, onnxruntime.

A runner takes the network's inputs as a dict of numpy arrays (name -> array with a batch
axis, already preprocessed) and returns logits as a numpy array (N, C). onnxruntime and onnx
are optional (the `export` extra) and imported only here, when a runner needs them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from slimlab.models.base import call_net, logits_of
from slimlab.utils.onnx import (  # noqa: F401  (onnx_session, import_extra: part of this API)
    TENSOR_INPUT,
    import_extra,
    onnx_session,
)

Runner = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def torch_runner(net: nn.Module, device: str | torch.device = "cpu") -> Runner:
    """Runner of a torch network (module or `torch.export` program's module) in eval mode."""
    with contextlib.suppress(NotImplementedError):  # a torch.export program: already eval
        net.eval()

    @torch.no_grad()
    def run(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        tensors = {
            k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()
        }
        x: Any = tensors[TENSOR_INPUT] if list(tensors) == [TENSOR_INPUT] else tensors
        return logits_of(call_net(net, x)).float().cpu().numpy()

    return run


def onnx_runner(session: Any) -> Runner:
    """Runner of an onnxruntime session: feeds inputs by name, returns the first output."""
    names = [i.name for i in session.get_inputs()]

    def run(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        return session.run(None, {name: inputs[name] for name in names})[0]

    return run


def as_feed(x: Any) -> dict[str, np.ndarray]:
    """A network input (tensor or dict of tensors) as the runners' dict of numpy arrays."""
    if isinstance(x, Mapping):
        return {k: v.detach().cpu().numpy() for k, v in x.items()}
    return {TENSOR_INPUT: x.detach().cpu().numpy()}
