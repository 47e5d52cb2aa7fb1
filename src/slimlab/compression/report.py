"""What compression bought: parameters, MACs, size on disk and CPU latency of a network.

Shared by every compression callback (pruning, quantization, ...), which put
``compare(measure(before), measure(after))`` into ``pl_module.compression_report``. Nothing
here depends on a compression library: MACs are counted with forward hooks on Conv and
Linear layers, float, QAT and ``torch.ao`` quantized alike.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.ao.nn.quantized.modules.conv import _ConvNd as _QuantizedConvNd
from torch.ao.nn.quantized.modules.linear import Linear as _QuantizedLinear

from slimlab.models.base import count_parameters as count_params

# float (and QAT / fused-QAT, which subclass them) and int8 kernels whose MACs are counted
CONV_TYPES = (nn.modules.conv._ConvNd, _QuantizedConvNd)
LINEAR_TYPES = (nn.Linear, _QuantizedLinear)


def _shape(tensor: Any) -> torch.Size | None:
    if isinstance(tensor, list | tuple):
        tensor = tensor[0] if tensor else None
    return tensor.shape if isinstance(tensor, torch.Tensor) else None


def _layer_macs(module: nn.Module, inputs: tuple, output: Any) -> int:
    out_shape, in_shape = _shape(output), _shape(inputs)
    if out_shape is None:
        return 0
    if isinstance(module, CONV_TYPES):
        kernel = math.prod(module.kernel_size)
        if getattr(module, "transposed", False):  # each input element feeds out/groups * k
            return int(math.prod(in_shape or ())) * module.out_channels // module.groups * kernel
        return math.prod(out_shape) * module.in_channels // module.groups * kernel
    in_features = module.in_features  # Linear: one MAC per input feature per output element
    return math.prod(out_shape) * in_features


@contextlib.contextmanager
def _measuring(net: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no_grad, and QAT observers paused (their ranges must not move), then restored."""
    flags = [
        (m.observer_enabled, m.observer_enabled.clone())
        for m in net.modules()
        if isinstance(getattr(m, "observer_enabled", None), torch.Tensor)
    ]
    was_training = net.training
    try:
        for flag, _ in flags:
            flag.fill_(0)
        with torch.no_grad():
            yield net.eval()
    finally:
        for flag, value in flags:
            flag.copy_(value)
        net.train(was_training)


def count_macs(net: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of Conv and Linear layers in one forward pass on `example_input`.

    Counts the whole batch of `example_input` (a batch-1 input gives MACs per sample).
    Other layers (norms, activations, pooling) are not counted. `net` runs in eval mode under
    `no_grad` with any QAT observers paused, and is left as it was.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        nonlocal total
        total += _layer_macs(module, inputs, output)

    handles = [
        m.register_forward_hook(hook)
        for m in net.modules()
        if isinstance(m, CONV_TYPES + LINEAR_TYPES)
    ]
    try:
        with _measuring(net):
            net(example_input.to(_device(net)))
    finally:
        for handle in handles:
            handle.remove()
    return int(total)


def size_on_disk(net: nn.Module) -> int:
    """Bytes of `torch.save(net.state_dict())`: what the weights take in a file."""
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.tell()


def _device(net: nn.Module) -> torch.device:
    tensor = next(iter(net.parameters()), None)
    if tensor is None:
        tensor = next(iter(net.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _cpu_copy(net: nn.Module) -> nn.Module:
    return net if _device(net).type == "cpu" else copy.deepcopy(net).cpu()


def measure_latency(
    net: nn.Module,
    example_input: torch.Tensor,
    batch_size: int,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = 1,
) -> float:
    """Median milliseconds of one forward pass of a `batch_size` batch on the CPU.

    The batch repeats the shape of one `example_input` sample with random values. `net` runs
    in eval mode under `no_grad` with QAT observers paused (a copy, if it lives on another
    device) on `threads` CPU threads (None: torch's current setting); its mode, observers and
    torch's thread count are restored.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"batch_size={batch_size}, repeats={repeats}, warmup={warmup}: give batch_size >= 1, "
            "repeats >= 1 and warmup >= 0"
        )
    model = _cpu_copy(net)
    generator = torch.Generator().manual_seed(0)
    sample_shape = tuple(example_input.shape[1:])
    x = torch.randn((batch_size, *sample_shape), generator=generator, dtype=torch.float32)
    x = x.to(example_input.dtype) if example_input.is_floating_point() else x
    old_threads = torch.get_num_threads()
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with _measuring(model):
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old_threads)
    return statistics.median(times) * 1000.0


def measure(
    net: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 20,
    latency: bool = True,
    threads: int | None = 1,
) -> dict[str, Any]:
    """params, macs (per sample), size_bytes and latency_ms_b<N> for each of `batch_sizes`.

    `latency=False` leaves the latency keys out (cheap enough for every training run).
    """
    sample = example_input[:1]
    result: dict[str, Any] = {
        "params": count_params(net),
        "macs": count_macs(net, sample),
        "size_bytes": size_on_disk(net),
    }
    if latency:
        for batch_size in batch_sizes:
            result[f"latency_ms_b{batch_size}"] = measure_latency(
                net, sample, batch_size, repeats=repeats, threads=threads
            )
    return result


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if not isinstance(numerator, int | float) or not isinstance(denominator, int | float):
        return None
    return float(numerator) / float(denominator) if denominator else None


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`before` and `after` (from `measure`) with after/before ratios and before/after speed-ups.

    Ratios below 1 mean smaller; speed-ups above 1 mean faster. A ratio is None when either
    side lacks the value.
    """
    result: dict[str, Any] = {
        "before": dict(before),
        "after": dict(after),
        "params_ratio": _ratio(after.get("params"), before.get("params")),
        "macs_ratio": _ratio(after.get("macs"), before.get("macs")),
        "size_ratio": _ratio(after.get("size_bytes"), before.get("size_bytes")),
    }
    batch_sizes = sorted(
        {int(k.rsplit("_b", 1)[1]) for k in (*before, *after) if k.startswith("latency_ms_b")}
        | {1, 64}
    )
    for batch_size in batch_sizes:
        key = f"latency_ms_b{batch_size}"
        result[f"speedup_b{batch_size}"] = _ratio(before.get(key), after.get(key))
    return result


def add_section(pl_module: Any, name: str, section: dict[str, Any]) -> None:
    """Put `section` under `name` in `pl_module.compression_report` (what metrics.json gets)."""
    report = dict(getattr(pl_module, "compression_report", None) or {})
    report[name] = section
    pl_module.compression_report = report
