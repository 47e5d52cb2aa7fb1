"""torch.export and ONNX plumbing shared by export (slimlab.inference) and reports (compression).

- `batch_example` / `dynamic_batch`: the exporters' inputs from a batch-1 example input (a
  tensor, or a dict of tensors passed by name), with a dynamic batch axis;
- `export_onnx`: `torch.onnx.export(dynamo=True)` of a network to a file;
- `onnx_session`: an onnxruntime CPU session with a set number of threads;
- `import_extra`: onnx, onnxscript and onnxruntime come with the `export` extra and are
  imported only when used, with an error that says how to install them.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from slimlab.utils.errors import ConfigError

TENSOR_INPUT = "input"  # the ONNX input name of a network that takes one tensor


class ExportFailed(RuntimeError):
    """The exporter could not handle the network (an unsupported op, untraceable Python)."""


def import_extra(name: str) -> ModuleType:
    """Import `name` from the `export` extra, or fail saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"{name} is not installed: export and ONNX inference need the `export` extra, "
            'pip install -e ".[export]"'
        ) from exc


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message` of an exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' progress prints and warnings (torchvision ops, optimiser notes)."""
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export")
    ]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def batch_example(example: Any) -> tuple[tuple, dict]:
    """(args, kwargs) for the exporters from a batch-1 example, repeated to batch 2.

    Batch 2, because torch.export specialises a dimension of size 1 and the batch axis must stay
    dynamic.
    """
    if isinstance(example, Mapping):
        return (), {k: v[:1].repeat(2, *[1] * (v.ndim - 1)) for k, v in example.items()}
    return (example[:1].repeat(2, *[1] * (example.ndim - 1)),), {}


def dynamic_batch(args: tuple, kwargs: dict) -> Any:
    """torch.export's `dynamic_shapes` making axis 0 of every input the batch axis."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    if kwargs:
        return {k: {0: batch} for k in kwargs}
    return ({0: batch},)


def export_onnx(net: nn.Module, example: Any, path: Path, opset: int) -> None:
    """Write `net` to `path` as ONNX (dynamo exporter), dynamic batch axis, opset `opset`.

    Inputs are named after the example's keys (one tensor: "input"), the output "logits".
    """
    import_extra("onnx")
    import_extra("onnxscript")
    args, kwargs = batch_example(example)
    input_names = list(kwargs) if kwargs else [TENSOR_INPUT]
    net = copy.deepcopy(net).cpu().eval()
    try:
        with quiet():
            program = torch.onnx.export(
                net,
                args,
                kwargs=kwargs or None,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic_batch(args, kwargs),
                input_names=input_names,
                output_names=["logits"],
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types for ops it cannot translate
        raise ExportFailed(
            f"torch.onnx.export(dynamo=True) cannot export model.net ({type(net).__name__}) at "
            f"opset {opset}: {first_line(exc)}"
        ) from exc
    if program is None:
        raise ExportFailed(f"torch.onnx.export returned no program for model.net at opset {opset}")
    program.save(str(path))


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of `path`; `threads` intra-op threads (None: onnxruntime's)."""
    ort = import_extra("onnxruntime")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
