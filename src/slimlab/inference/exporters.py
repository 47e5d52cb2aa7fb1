"""Write a network to an inference format: ONNX fp32, ONNX int8 (QDQ), a torch.export program.

- `export_onnx`: `torch.onnx.export(dynamo=True)` (torch.export, then onnxscript's translation)
  with a dynamic batch axis at a chosen opset (`slimlab.utils.onnx`, which QAT's report shares);
- `quantize_onnx_int8`: onnxruntime static quantization of that file to QDQ form (int8
  per-channel symmetric weights, uint8 per-tensor activations), calibrated on batches the
  caller gives (the training split);
- `quantize_onnx_dynamic`: onnxruntime dynamic quantization of that file (int8 weights of the
  MatMul/Gemm layers, activations quantized per batch at run time, no calibration): the
  faster int8 path for transformers on CPU (docs/transformers.md);
- `export_pt2`: a `torch.export` program saved with `torch.export.save`;
- `onnx_signature`: opset, input and output names/shapes/dtypes of an ONNX file.

Each raises `ExportFailed` with the exporter's first line when the network cannot be exported.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimlab.utils.onnx import (  # noqa: F401  (ExportFailed, export_onnx: part of this API)
    ExportFailed,
    batch_example,
    dynamic_batch,
    export_onnx,
    first_line,
    import_extra,
    quiet,
)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def torch_export(net: nn.Module, example: Any) -> torch.export.ExportedProgram:
    """`torch.export.export` of `net` in eval mode with a dynamic batch axis."""
    args, kwargs = batch_example(example)
    net = copy.deepcopy(net).cpu().eval()
    try:
        with quiet():
            return torch.export.export(
                net, args, kwargs=kwargs, dynamic_shapes=dynamic_batch(args, kwargs)
            )
    except Exception as exc:  # torch.export raises many types for what it cannot capture
        raise ExportFailed(
            f"torch.export cannot capture model.net ({type(net).__name__}): {first_line(exc)}"
        ) from exc


def export_pt2(net: nn.Module, example: Any, path: Path) -> torch.export.ExportedProgram:
    """Save `net` as a torch.export program (.pt2) with a dynamic batch axis."""
    program = torch_export(net, example)
    torch.export.save(program, str(path))
    return program


@contextlib.contextmanager
def preprocessed(fp32_path: Path, int8_path: Path) -> Iterator[Path]:
    """`fp32_path` after onnxruntime's shape inference and graph clean-up (which its docs
    advise before quantizing), as a hidden file beside `int8_path`, removed afterwards."""
    quantization = import_extra("onnxruntime.quantization")
    pre = int8_path.with_name(f".pre.{int8_path.name}")
    try:
        quantization.quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        yield pre
    finally:
        pre.unlink(missing_ok=True)


def quantize_onnx_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration: Iterable[Mapping[str, np.ndarray]],
    method: str = "minmax",
    reduce_range: bool = True,
) -> None:
    """onnxruntime static int8 quantization of `fp32_path` into QDQ form at `int8_path`.

    Weights int8, symmetric, per output channel; activations uint8, affine, per tensor, with
    ranges from the `calibration` feeds (dicts of input name -> preprocessed batch).
    `reduce_range` keeps weights to 7 bits: onnxruntime's uint8 x int8 kernels on x86 CPUs
    without VNNI (AVX2) add pairs of products in int16 and saturate with full 8-bit weights.
    """
    quantization = import_extra("onnxruntime.quantization")
    methods = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
    }

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    try:
        with quiet(), preprocessed(fp32_path, int8_path) as pre:
            quantization.quantize_static(
                str(pre),
                str(int8_path),
                Reader(),
                quant_format=quantization.QuantFormat.QDQ,
                per_channel=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=methods[method],
                reduce_range=reduce_range,
            )
    except Exception as exc:
        raise ExportFailed(
            f"onnxruntime static quantization of {fp32_path.name} failed: {first_line(exc)}"
        ) from exc
    finally:
        for leftover in int8_path.parent.glob("augmented_model*.onnx"):
            leftover.unlink(missing_ok=True)


def quantize_onnx_dynamic(fp32_path: Path, int8_path: Path, reduce_range: bool = True) -> None:
    """onnxruntime dynamic int8 quantization of `fp32_path`'s MatMul and Gemm layers.

    Weights int8, symmetric, per tensor; each layer's input is quantized to uint8 from its own
    range on every call (DynamicQuantizeLinear + MatMulInteger, which onnxruntime fuses into
    `DynamicQuantizeMatMul`), so nothing is calibrated. Convolutions stay fp32: onnxruntime's
    `ConvInteger` was 7x slower than its fp32 conv on the ViT's patch embedding.
    `reduce_range` as for `quantize_onnx_int8`.
    """
    quantization = import_extra("onnxruntime.quantization")
    try:
        with quiet(), preprocessed(fp32_path, int8_path) as pre:
            quantization.quantize_dynamic(
                str(pre),
                str(int8_path),
                op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=quantization.QuantType.QInt8,
                reduce_range=reduce_range,
            )
    except Exception as exc:
        raise ExportFailed(
            f"onnxruntime dynamic quantization of {fp32_path.name} failed: {first_line(exc)}"
        ) from exc


def onnx_signature(path: Path) -> dict[str, Any]:
    """opset, inputs and outputs (name, shape with "batch" for the dynamic axis, dtype)."""
    onnx = import_extra("onnx")
    model = onnx.load(str(path), load_external_data=False)

    def describe(values: Any) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            out.append({"name": value.name, "shape": shape, "dtype": dtype})
        return out

    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": describe(model.graph.input),
        "outputs": describe(model.graph.output),
        "quantize_linear_nodes": ops.get("QuantizeLinear", 0),
        "dequantize_linear_nodes": ops.get("DequantizeLinear", 0),
        "dynamic_quantize_linear_nodes": ops.get("DynamicQuantizeLinear", 0),
    }
