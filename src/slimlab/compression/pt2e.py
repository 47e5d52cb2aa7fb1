"""The PT2E quantization stack (torchao): the functions QAT moves to (docs/quantization.md).

Same four roles as the torch.ao FX functions at the top of `compression/quantization.py`, so
the QAT callback can swap them in without changing its interface. Timeline of their use:

- `prepare_qat(net, example_input)`: `torch.export` of the network in training mode (dynamic
  batch axis), then `prepare_qat_pt2e` with `X86InductorQuantizer`'s QAT config (conv-bn
  folded with simulated fusion, per-channel symmetric 7-bit-range int8 weights, uint8
  activations). The
  result is a `GraphModule` whose `train()`/`eval()` switch its batch-norm and dropout ops, so
  Lightning's mode switching works; its state dict holds plain tensors with the network's own
  names (`features.0.0.weight`, ...) plus `activation_post_process_<i>.*`, stable when a
  checkpoint is loaded into a freshly exported and prepared network;
- `set_qat_state(net, fake_quant, observe, freeze_bn)`: fake quantization, observers and
  batch-norm statistics, from the callback's epoch schedule (call after `net.train()`: that
  puts batch norms back in training mode);
- `convert_int8(net)`: `convert_pt2e` of a copy: a `GraphModule` with quantize/dequantize ops
  around fp32 ops and int8 weights. `torch.onnx.export(dynamo=True)` turns it into QDQ ONNX
  that onnxruntime runs with int8 kernels, carrying the learned scales; `torch.compile`
  (inductor, freezing) lowers it to int8 CPU kernels.

torchao is optional (the `export` extra); it is imported inside each function.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch
from torch import nn

from slimlab.utils import compat
from slimlab.utils.errors import ConfigError


def _torchao_pt2e() -> Any:
    try:
        import torchao.quantization.pt2e as pt2e
    except ImportError as exc:
        raise ConfigError(
            'torchao is not installed: the PT2E stack needs pip install -e ".[export]"'
        ) from exc
    return pt2e


def make_quantizer(is_qat: bool = True, reduce_range: bool = True) -> Any:
    """X86InductorQuantizer with its default (QAT) config for every supported op.

    `reduce_range` keeps weights to 7 bits ([-64, 63]): onnxruntime's uint8 x int8 kernels on
    x86 CPUs without VNNI saturate int16 sums with full 8-bit weights (docs/quantization.md).
    """
    _torchao_pt2e()
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if reduce_range:
        weight = dataclasses.replace(config.weight, quant_min=-64, quant_max=63)
        config = dataclasses.replace(config, weight=weight)
    return X86InductorQuantizer().set_global(config)


def _example_args(example_input: Any) -> tuple[tuple, dict, Any]:
    """(args, kwargs, dynamic_shapes) for torch.export from a batch-1 example, at batch 2."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    if isinstance(example_input, dict):
        kwargs = {k: v[:1].repeat(2, *[1] * (v.ndim - 1)) for k, v in example_input.items()}
        return (), kwargs, {k: {0: batch} for k in kwargs}
    x = example_input[:1].repeat(2, *[1] * (example_input.ndim - 1))
    return (x,), {}, ({0: batch},)


def prepare_qat(net: nn.Module, example_input: Any) -> torch.fx.GraphModule:
    """Export `net` in training mode and insert fake quantization (a new GraphModule)."""
    pt2e = _torchao_pt2e()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    args, kwargs, dynamic = _example_args(example_input)
    was_training = net.training
    try:
        exported = torch.export.export(net.train(), args, kwargs=kwargs, dynamic_shapes=dynamic)
    except Exception as exc:  # torch.export raises many types for what it cannot capture
        raise ConfigError(
            f"model.net ({type(net).__name__}) cannot be captured by torch.export for QAT: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from exc
    finally:
        net.train(was_training)
    prepared = prepare_qat_pt2e(exported.module(), make_quantizer(is_qat=True))
    pt2e.allow_exported_model_train_eval(prepared)
    prepared.train(was_training)  # the exported graph's own train(), which returns None
    return prepared


def set_qat_state(
    net: nn.Module, fake_quant: bool, observe: bool, freeze_bn: bool | None = None
) -> None:
    """Switch fake quantization, observers and (unless None) batch-norm statistics updates."""
    pt2e = _torchao_pt2e()
    net.apply(pt2e.enable_fake_quant if fake_quant else pt2e.disable_fake_quant)
    net.apply(pt2e.enable_observer if observe else pt2e.disable_observer)
    if freeze_bn is not None and isinstance(net, torch.fx.GraphModule):
        compat.set_exported_batchnorm_training(net, training=not freeze_bn)


def convert_int8(net: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 GraphModule (q/dq ops, int8 weights) of a QAT-prepared copy of `net`."""
    pt2e = _torchao_pt2e()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model = copy.deepcopy(net)
    pt2e.move_exported_model_to_eval(model)
    return convert_pt2e(model)
