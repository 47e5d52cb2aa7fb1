"""How compression is measured: params, MACs, size on disk, CPU latency, accuracy, before/after.

Every compression callback builds its `compression_report` section from these functions, so
every before/after figure in metrics.json is measured the same way:

- params count int8 and 4-bit weights as the float weights they replace
  (`slimlab.models.count_parameters`), MACs are those of Conv and Linear layers (float, QAT
  and int8 alike; in an exported graph, its convolutions and matrix products) on one example,
  size is the bytes of the saved `state_dict`;
- latency runs a CPU copy of the network in eval mode, under `no_grad`, with QAT observers
  paused, on `THREADS` thread(s), on the module's `example_input_array` repeated to the batch
  size (its dtypes and structure: token ids stay integer ids), median of `repeats` runs; in
  PyTorch (`runtime="torch"`), or exported to ONNX and run by onnxruntime
  (`runtime="onnxruntime"`: how an int8 model is deployed, see QAT);
- accuracy is top-1 over the same dataloader for both sides, on the batches as Lightning's
  evaluation loop hands them to the module (the datamodule's normalization applied, training
  augmentation off), summed over DDP ranks;
- `compare` reports a ratio only where both sides have the value; a latency measured on one
  side only is dropped rather than set against a figure measured another way.

A callback's `report` argument has one shape everywhere: `true`, `false`, or a mapping with
`enabled`, `latency` and `repeats` (`report_settings`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from slimlab.models.base import call_net, logits_of
from slimlab.utils.compat import loop_batch
from slimlab.utils.errors import require
from slimlab.utils.onnx import TENSOR_INPUT, export_onnx, onnx_session
from slimlab.utils.params import count_parameters

count_params = count_parameters  # the one parameter count (int8 and 4-bit weights included)

# layers whose MACs are counted (subclasses too: bitsandbytes' linear layers)
CONV_TYPES = (nn.modules.conv._ConvNd,)
LINEAR_TYPES = (nn.Linear,)
# ... and the ops they become in an exported graph (attention's batched matmuls are not counted)
MAC_OPS = ("convolution", "mm", "addmm")
BATCH_SIZES = (1, 64)  # latency is measured at these batch sizes
THREADS = 1  # CPU threads for every latency figure (small models; comparable across runs)
REPORT_KEYS = ("enabled", "latency", "repeats")
RUNTIMES = ("torch", "onnxruntime")  # where latency is measured
ONNX_OPSET = 20


# -- the `report` argument --------------------------------------------------------------------
@dataclass(frozen=True)
class ReportSettings:
    """What a compression callback measures into its report section."""

    enabled: bool = True
    latency: bool = True  # CPU latency at BATCH_SIZES (a few seconds)
    repeats: int = 20  # timed forward passes per batch size (the median is reported)


def report_settings(report: bool | Mapping[str, Any] | None, key: str) -> ReportSettings:
    """Read a callback's `report` argument (true, false, or {enabled, latency, repeats});
    `key` (e.g. "compression.prune") names it in errors."""
    if report is None or isinstance(report, bool):
        return ReportSettings(enabled=bool(report))
    require(
        isinstance(report, Mapping),
        f"{key}.report={report!r} is invalid: give true, false or a mapping with "
        f"{list(REPORT_KEYS)}",
    )
    unknown = sorted(set(report) - set(REPORT_KEYS))
    require(not unknown, f"{key}.report has unknown keys {unknown}: give {list(REPORT_KEYS)}")
    repeats = int(report.get("repeats", 20))
    require(repeats >= 1, f"{key}.report.repeats={repeats} is out of range: give >= 1")
    return ReportSettings(
        enabled=bool(report.get("enabled", True)),
        latency=bool(report.get("latency", True)),
        repeats=repeats,
    )


# -- inputs -----------------------------------------------------------------------------------
def device_of(net: nn.Module) -> torch.device:
    """The device of `net`'s first parameter (else buffer); the CPU for a net with neither."""
    tensor = next(iter(net.parameters()), None)
    if tensor is None:
        tensor = next(iter(net.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def move_to(inputs: Any, device: torch.device | str) -> Any:
    """`inputs` (a tensor, or a dict of tensors) on `device`."""
    if isinstance(inputs, Mapping):
        return {k: move_to(v, device) for k, v in inputs.items()}
    return inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs


def example_batch(example: Any, batch_size: int) -> Any:
    """The first sample of `example` (a tensor or a dict of tensors) repeated `batch_size`
    times along dim 0: the same dtypes and structure, a batch of the size asked."""
    if isinstance(example, Mapping):
        return {k: example_batch(v, batch_size) for k, v in example.items()}
    if not isinstance(example, torch.Tensor) or example.dim() == 0:
        return example
    sample = example[:1]
    return sample.repeat(batch_size, *([1] * (sample.dim() - 1)))


def describe_input(example: Any) -> str:
    """A short description of an example input, for error messages."""
    if isinstance(example, Mapping):
        return "{" + ", ".join(f"{k}: {describe_input(v)}" for k, v in example.items()) + "}"
    if isinstance(example, torch.Tensor):
        return f"{str(example.dtype).removeprefix('torch.')}{tuple(example.shape)}"
    return type(example).__name__


# -- what a network costs ---------------------------------------------------------------------
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
def measuring(net: nn.Module) -> Iterator[nn.Module]:
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


def _graph_macs(net: torch.fx.GraphModule, example_input: Any) -> int:
    """MACs of the convolutions and (non-batched) matrix products an exported graph runs."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with measuring(net), counter:
        call_net(net, move_to(example_input, device_of(net)))
    flops = counter.get_flop_counts().get("Global", {})
    return int(sum(v for op, v in flops.items() if getattr(op, "__name__", "") in MAC_OPS) // 2)


def count_macs(net: nn.Module, example_input: Any) -> int:
    """Multiply-accumulates of Conv and Linear layers in one forward pass on `example_input`.

    Counts the whole batch of `example_input` (a batch-1 input gives MACs per sample).
    Other layers (norms, activations, pooling, attention matmuls) are not counted. `net` runs
    in eval mode under `no_grad` with any QAT observers paused, and is left as it was. An
    exported graph (QAT's prepared or int8 network) has no layer modules: its convolution and
    matrix-product ops are counted instead, which gives the same number.
    """
    if isinstance(net, torch.fx.GraphModule):
        return _graph_macs(net, example_input)
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
        with measuring(net):
            call_net(net, move_to(example_input, device_of(net)))
    finally:
        for handle in handles:
            handle.remove()
    return int(total)


def size_on_disk(net: nn.Module) -> int:
    """Bytes of `torch.save(net.state_dict())`: what the weights take in a file."""
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.tell()


def _cpu_copy(net: nn.Module) -> nn.Module:
    return net if device_of(net).type == "cpu" else copy.deepcopy(net).cpu()


def measure_latency(
    net: nn.Module,
    example_input: Any,
    batch_size: int,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = THREADS,
) -> float:
    """Median milliseconds of one forward pass of a `batch_size` batch on the CPU.

    The batch repeats the first sample of `example_input` (`example_batch`). `net` runs in
    eval mode under `no_grad` with QAT observers paused (a copy, if it lives on another device)
    on `threads` CPU threads (None: torch's current setting); its mode, observers and torch's
    thread count are restored.
    """
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"batch_size={batch_size}, repeats={repeats}, warmup={warmup}: give batch_size >= 1, "
            "repeats >= 1 and warmup >= 0"
        )
    model = _cpu_copy(net)
    x = move_to(example_batch(example_input, batch_size), "cpu")
    old_threads = torch.get_num_threads()
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with measuring(model):
            for _ in range(warmup):
                call_net(model, x)
            for _ in range(repeats):
                start = time.perf_counter()
                call_net(model, x)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(old_threads)
    return statistics.median(times) * 1000.0


def onnxruntime_latencies(
    net: nn.Module,
    example_input: Any,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = 20,
    warmup: int = 3,
    threads: int = THREADS,
) -> dict[int, float]:
    """Median milliseconds of one onnxruntime call per batch size, `net` exported to ONNX.

    The batch repeats the first sample of `example_input`, as `measure_latency` does; the
    session runs on `threads` threads. Needs the `export` extra (onnx, onnxscript,
    onnxruntime); raises `slimlab.utils.onnx.ExportFailed` when `net` does not export.
    """
    with tempfile.TemporaryDirectory(prefix="slimlab-latency-") as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(net, example_batch(example_input, 1), path, ONNX_OPSET)
        session = onnx_session(path, threads)
    names = [i.name for i in session.get_inputs()]
    result = {}
    for batch_size in batch_sizes:
        batch = move_to(example_batch(example_input, batch_size), "cpu")
        arrays = batch if isinstance(batch, Mapping) else {TENSOR_INPUT: batch}
        feed = {name: arrays[name].numpy() for name in names}
        for _ in range(warmup):
            session.run(None, feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        result[batch_size] = statistics.median(times) * 1000.0
    return result


def measure(
    net: nn.Module,
    example_input: Any,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = 20,
    latency: bool = True,
    threads: int | None = THREADS,
    runtime: str = "torch",
) -> dict[str, Any]:
    """params, macs (per sample), size_bytes and latency_ms_b<N> for each of `batch_sizes`.

    `latency=False` leaves the latency keys out (cheap enough for every training run);
    `runtime` is where latency is measured (`RUNTIMES`).
    """
    require(runtime in RUNTIMES, f"runtime={runtime!r} is not one of {list(RUNTIMES)}")
    sample = example_batch(example_input, 1)
    result: dict[str, Any] = {
        "params": count_params(net),
        "macs": count_macs(net, sample),
        "size_bytes": size_on_disk(net),
    }
    if latency and runtime == "onnxruntime":
        times = onnxruntime_latencies(net, sample, batch_sizes, repeats, threads=threads or 1)
        result.update({f"latency_ms_b{b}": ms for b, ms in times.items()})
    elif latency:
        for batch_size in batch_sizes:
            result[f"latency_ms_b{batch_size}"] = measure_latency(
                net, sample, batch_size, repeats=repeats, threads=threads
            )
    return result


def measure_as(
    net: nn.Module, example_input: Any, settings: ReportSettings, runtime: str = "torch"
) -> dict[str, Any]:
    """`measure` with a callback's report settings."""
    return measure(
        net, example_input, repeats=settings.repeats, latency=settings.latency, runtime=runtime
    )


# -- accuracy ---------------------------------------------------------------------------------
def inputs_and_labels(batch: Any) -> tuple[Any, torch.Tensor] | None:
    """(inputs, class indices) of a batch: `(x, y, ...)`, or a dict with "labels" (the rest are
    the inputs); None for batches of another form."""
    if isinstance(batch, list | tuple) and len(batch) >= 2:
        inputs, labels = batch[0], batch[1]
    elif isinstance(batch, Mapping) and "labels" in batch:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        labels = batch["labels"]
    else:
        return None
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point():
        return None
    return inputs, labels


@torch.no_grad()
def top1_counts(
    net: nn.Module,
    dataloaders: Any,
    device: torch.device,
    transfer: Callable[[Any], Any] | None = None,
) -> tuple[int, int]:
    """(correct, seen) of `net`'s top-1 class over `dataloaders` ((inputs, class index) batches,
    or dicts with "labels"); (0, 0) when a batch has another form. `transfer(batch)` prepares
    each batch first (see `loop_top1_counts`). `net` runs in eval mode and is left in the mode
    it was in."""
    loaders = dataloaders if isinstance(dataloaders, list | tuple) else [dataloaders]
    correct = seen = 0
    was_training = net.training
    net.eval()
    try:
        for loader in loaders:
            for batch in loader or []:
                pair = inputs_and_labels(transfer(batch) if transfer is not None else batch)
                if pair is None:
                    return 0, 0
                inputs, labels = move_to(pair[0], device), pair[1].to(device)
                predicted = logits_of(call_net(net, inputs)).argmax(dim=-1)
                correct += int((predicted == labels).sum())
                seen += int(labels.numel())
    finally:
        net.train(was_training)
    return correct, seen


@contextlib.contextmanager
def evaluating(trainer: L.Trainer) -> Iterator[None]:
    """The trainer in its validation stage for the block (training-only augmentation off)."""
    stage = trainer.state.stage
    trainer.validating = True
    try:
        yield
    finally:
        trainer.state.stage = stage


def loop_top1_counts(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    net: nn.Module,
    dataloaders: Any,
    device: torch.device,
) -> tuple[int, int]:
    """`top1_counts` of `net` on `device` over the batches as Lightning's evaluation loop hands
    them to `pl_module`: through the batch-transfer hooks (the datamodule's normalization
    included), with training-only augmentation off."""
    with evaluating(trainer):
        return top1_counts(
            net, dataloaders, device, transfer=lambda b: loop_batch(pl_module, b, device)
        )


def sum_over_ranks(trainer: L.Trainer, counts: Sequence[int], device: torch.device) -> list[float]:
    """`counts` summed over every DDP rank (a collective: call it on all ranks)."""
    tensor = torch.tensor(list(counts), dtype=torch.float64, device=device)
    return trainer.strategy.reduce(tensor, reduce_op="sum").tolist()


# -- validation metrics of the best epoch -----------------------------------------------------
def validation_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The scalar val/* metrics logged at the last validation, as val_<name> (not *_best)."""
    return {
        "val_" + key[4:]: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("val/") and not key.endswith("_best") and value.numel() == 1
    }


def _monitor(trainer: L.Trainer) -> tuple[str | None, str]:
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None:
            return cb.monitor, cb.mode
    return None, "max"


class BestValidation:
    """The validation metrics of the best epoch seen, judged as the checkpoint callback judges
    (its monitor and mode); without a monitored val/* metric the latest epoch counts as best."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] | None = None
        self.epoch: int | None = None

    def update(self, trainer: L.Trainer) -> None:
        """Consider the validation that just ended (call it from `on_validation_end`)."""
        if trainer.sanity_checking:
            return
        metrics = validation_metrics(trainer)
        if not metrics:
            return
        monitor, mode = _monitor(trainer)
        key = "val_" + monitor[4:] if monitor and monitor.startswith("val/") else None
        if self.metrics is not None and key in metrics and key in self.metrics:
            new, best = metrics[key], self.metrics[key]
            if (new <= best) if mode == "max" else (new >= best):
                return
        self.metrics, self.epoch = metrics, int(trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.metrics, self.epoch = state.get("metrics"), state.get("epoch")


# -- the report section -----------------------------------------------------------------------
def _ratio(numerator: Any, denominator: Any) -> float | None:
    if not isinstance(numerator, int | float) or not isinstance(denominator, int | float):
        return None
    return float(numerator) / float(denominator) if denominator else None


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`before` and `after` (from `measure`) with after/before ratios and before/after speed-ups.

    Ratios below 1 mean smaller; speed-ups above 1 mean faster. A ratio is None when either
    side lacks the value; a latency measured on one side only is left out of both.
    """
    latency = {k for k in (*before, *after) if k.startswith("latency_ms_b")}
    one_sided = {k for k in latency if (k in before) != (k in after)}
    before = {k: v for k, v in before.items() if k not in one_sided}
    after = {k: v for k, v in after.items() if k not in one_sided}
    result: dict[str, Any] = {
        "before": dict(before),
        "after": dict(after),
        "params_ratio": _ratio(after.get("params"), before.get("params")),
        "macs_ratio": _ratio(after.get("macs"), before.get("macs")),
        "size_ratio": _ratio(after.get("size_bytes"), before.get("size_bytes")),
    }
    batch_sizes = sorted({int(k.rsplit("_b", 1)[1]) for k in latency} | set(BATCH_SIZES))
    for batch_size in batch_sizes:
        key = f"latency_ms_b{batch_size}"
        result[f"speedup_b{batch_size}"] = _ratio(before.get(key), after.get(key))
    return result


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> dict[str, float]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}/{key}", item, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)
    return out


def add_section(pl_module: Any, name: str, section: dict[str, Any]) -> None:
    """Put `section` under `name` in `pl_module.compression_report` (what metrics.json gets)
    and send its numbers to the trainer's loggers as compression/<name>/..."""
    report = dict(getattr(pl_module, "compression_report", None) or {})
    report[name] = section
    pl_module.compression_report = report
    trainer = getattr(pl_module, "_trainer", None)
    if trainer is None:
        return
    flat = _flatten(f"compression/{name}", section, {})
    for logger in trainer.loggers:
        logger.log_metrics(flat, step=trainer.global_step)
