"""The QAT stack: torchao PT2E (`torch.export` -> `prepare_qat_pt2e` -> train -> `convert_pt2e`).

`slimlab.compression.quantization` (the QAT callback and its restorer) and export.py call only
the functions here; docs/quantization.md says why this stack was chosen. Timeline of their use:

- `prepare_qat(net, example_input, backend)`: `torch.export` of the network in training mode
  (dynamic batch axis; a dict example becomes keyword inputs; a net that returns an object
  holding logits is exported as its logits), then `prepare_qat_pt2e` with `make_quantizer`
  (X86InductorQuantizer's QAT config: conv-bn folded with simulated fusion, per-channel
  symmetric int8 weights, uint8 activations; plus the residual additions, so onnxruntime runs
  ResNet blocks in int8). The result is a `GraphModule` whose `train()`/`eval()` switch its
  batch-norm and dropout ops (so Lightning's mode switching works) and whose ops follow the
  device of its input. Its state dict holds plain tensors with the network's own names
  (`features.0.0.weight`, ...) plus `activation_post_process_<i>.*`, the same for a freshly
  exported and prepared copy of the network;
- `set_qat_state(net, fake_quant, observe, freeze_bn)`: fake quantization, observers and
  batch-norm statistics, from the callback's epoch schedule (a frozen batch norm stays frozen
  across `train()`);
- `convert_int8(net)`: `convert_pt2e` of a CPU copy: a `GraphModule` with int8 weights
  (`_frozen_param<i>` buffers, per-channel scales `_scale_<i>`) and quantize/dequantize ops
  around fp32 ops: PyTorch runs it as reference int8 arithmetic (plain tensor ops, on any
  device); `torch.onnx.export(dynamo=True)` turns it into QDQ ONNX that onnxruntime runs with
  int8 kernels, carrying the learned scales. Its activation scales are constants of the graph,
  not tensors of the state dict: `activation_qparams` reads them for the checkpoint and
  `set_activation_qparams` puts them back into a re-converted graph;
- `float_view(converted)`: the same graph without activation quantization and with dequantized
  weights: the fp32 network the int8 one computes, for export.py's `model.onnx`.

torchao's pattern matching is made cheap once per process (`compat.fast_pt2e_patterns`).
"""

from __future__ import annotations

import copy
import inspect
import operator
import types
from typing import Any

import torch
from torch import nn

from slimlab.compression.measure import describe_input, device_of, measuring, move_to
from slimlab.models.base import call_net, logits_of
from slimlab.utils import compat
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.onnx import batch_example, dynamic_batch

# the CPU the int8 model is made for: x86 (= fbgemm) keeps weights to 7 bits (int8 kernels of
# x86 CPUs without VNNI saturate with 8-bit weights); qnnpack (ARM) uses all 8
BACKENDS = ("x86", "fbgemm", "qnnpack")
REDUCED_RANGE_BACKENDS = ("x86", "fbgemm")
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BN_FROZEN = "slimlab_bn_frozen"  # in a prepared graph's meta: batch norm kept in eval mode
CONVERTED = "slimlab_int8"  # in a converted graph's meta
DROPOUT_P = "slimlab_dropout_p"  # in an attention node's meta: its dropout_p when training
ADD_OPS = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor, operator.add)
RELU_OPS = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)


def _torchao_pt2e() -> Any:
    try:
        import torchao.quantization.pt2e as pt2e
    except ImportError as exc:
        raise ConfigError(
            "torchao is not installed: QAT's PT2E stack needs it, pip install -e . "
            '(or pip install "torchao>=0.18")'
        ) from exc
    compat.fast_pt2e_patterns()
    return pt2e


def check_backend(backend: str, key: str = "compression.qat.backend") -> None:
    """Fail clearly on a backend that is not one of `BACKENDS`."""
    require(
        backend in BACKENDS,
        f"{key}={backend!r} is not a supported backend: give one of {list(BACKENDS)}",
    )


def check_quantizable(net: nn.Module) -> None:
    """Fail clearly when `net` has no Conv or Linear layer for QAT to quantize."""
    require(
        any(isinstance(m, QUANTIZABLE) for m in net.modules()),
        f"model.net ({type(net).__name__}) has no quantizable layer (Conv1d/2d/3d or Linear): "
        "QAT has nothing to quantize; remove compression.qat or use a network with such layers",
    )


# -- the quantizer ----------------------------------------------------------------------------
class ResidualAddQuantizer:
    """Quantize both inputs of every float tensor + tensor addition, and its output (or that of
    a ReLU right after it), with the activation spec of `config`.

    X86InductorQuantizer leaves a convolution followed by an addition unquantized at its output
    (inductor fuses conv + add), which onnxruntime cannot run in int8: a ResNet's QDQ file ran
    1.2x faster than fp32 eager instead of 2.8x (docs/quantization.md). Annotated first, the
    additions make X86InductorQuantizer annotate those convolutions alone, so onnxruntime fuses
    QLinearConv and QLinearAdd.
    """

    def __init__(self, config: Any) -> None:
        from torchao.quantization.pt2e.quantizer import get_input_act_qspec

        self.act = get_input_act_qspec(config)

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Annotate the additions of `model`'s graph (in place)."""
        for node in model.graph.nodes:
            if node.op != "call_function" or node.target not in ADD_OPS:
                continue
            inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
            values = [a.meta.get("val") for a in inputs]
            if len(inputs) != 2 or not all(
                isinstance(v, torch.Tensor) and v.is_floating_point() for v in values
            ):
                continue
            users = list(node.users)
            relu = users[0] if len(users) == 1 and users[0].target in RELU_OPS else None
            node.meta["quantization_annotation"] = compat.x86_quantization_annotation(
                input_qspec_map={a: self.act for a in inputs},
                output_qspec=None if relu is not None else self.act,
                _annotated=True,
                _is_output_of_quantized_pattern=relu is None,
            )
            if relu is not None:
                relu.meta["quantization_annotation"] = compat.x86_quantization_annotation(
                    output_qspec=self.act, _annotated=True, _is_output_of_quantized_pattern=True
                )
        return model

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """No graph change before annotating (the `Quantizer` interface)."""
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        """Nothing to check (the `Quantizer` interface)."""


def make_quantizer(is_qat: bool = True, reduce_range: bool = True) -> Any:
    """The residual additions, then X86InductorQuantizer's default config for every other op.

    `reduce_range` keeps weights to 7 bits ([-64, 63]): onnxruntime's uint8 x int8 kernels on
    x86 CPUs without VNNI saturate int16 sums with full 8-bit weights (docs/quantization.md).
    """
    _torchao_pt2e()
    import dataclasses

    from torchao.quantization.pt2e.quantizer import ComposableQuantizer
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    config = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if reduce_range:
        weight = dataclasses.replace(config.weight, quant_min=-64, quant_max=63)
        config = dataclasses.replace(config, weight=weight)

    additions = ResidualAddQuantizer(config)
    return ComposableQuantizer([additions, X86InductorQuantizer().set_global(config)])


# -- prepare ----------------------------------------------------------------------------------
def _logits_module(net: nn.Module) -> nn.Module:
    """`net` returning only its logits, with `net.forward`'s signature (what torch.export binds
    inputs by). For nets that return an object or dict holding `logits`."""
    signature = inspect.signature(net.forward)
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        return logits_of(self.net(*args, **kwargs))

    forward.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_parameter, *signature.parameters.values()]
    )

    class Logits(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.net = inner

    Logits.forward = forward  # type: ignore[method-assign]
    return Logits(net)


def _follow_input_device(graph_module: torch.fx.GraphModule) -> None:
    """Make ops that torch.export pinned to the tracing device (`arange(device=cpu)`, `to(...,
    device=cpu)`, as Hugging Face models have) take the device of the graph's first input, so
    the graph runs wherever it is moved."""
    graph = graph_module.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    pinned = [n for n in graph.nodes if isinstance(n.kwargs.get("device"), torch.device | str)]
    if not placeholders or not pinned:
        return
    with graph.inserting_after(placeholders[-1]):
        device = graph.call_function(getattr, (placeholders[0], "device"))
    for node in pinned:
        node.kwargs = {**node.kwargs, "device": device}
    graph_module.recompile()


def _drop_batch_counters(graph_module: torch.fx.GraphModule) -> None:
    """Remove the in-place `num_batches_tracked += 1` of batch norms from the graph.

    torch.export records it as a separate op that runs in eval mode too (the exported graph
    computes its momentum as a constant, so the counter feeds nothing); convert_pt2e drops it.
    """
    graph = graph_module.graph
    for node in list(graph.nodes):
        counter = node.args[0] if node.args else None
        if (
            node.target == torch.ops.aten.add_.Tensor
            and getattr(counter, "op", None) == "get_attr"
            and str(counter.target).endswith("num_batches_tracked")
            and not node.users
        ):
            graph.erase_node(node)
    graph_module.recompile()


def _set_dropout(graph_module: torch.fx.GraphModule, training: bool) -> None:
    """Switch every dropout the exported graph holds: `aten.dropout` / `native_dropout` nodes
    and the `dropout_p` that `scaled_dot_product_attention` got at export (Hugging Face
    attention passes `dropout_p` by training mode, which torch.export freezes into the graph).

    torchao's `move_exported_model_to_eval` matches `F.dropout` patterns only; a graph left
    with training-mode dropout is random in evaluation (a converted BERT disagreed with itself).
    """
    changed = False
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in (torch.ops.aten.dropout.default, torch.ops.aten.native_dropout.default):
            if len(node.args) >= 3 and node.args[2] != training:
                node.args = (*node.args[:2], training, *node.args[3:])
                changed = True
        elif node.target == torch.ops.aten.scaled_dot_product_attention.default:
            if "dropout_p" in node.kwargs:
                current = node.kwargs["dropout_p"]
            else:
                current = node.args[4] if len(node.args) > 4 else 0.0
            p = node.meta.setdefault(DROPOUT_P, current)
            wanted = p if training else 0.0
            if current != wanted:
                if "dropout_p" in node.kwargs or len(node.args) <= 4:
                    node.kwargs = {**node.kwargs, "dropout_p": wanted}
                else:
                    node.args = (*node.args[:4], wanted, *node.args[5:])
                changed = True
    if changed:
        graph_module.recompile()


def _train_or_eval(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
    """`train()` of a prepared graph: the module flags, and its batch-norm and dropout ops
    (torchao's move_exported_model_to_train/eval); a frozen batch norm stays in eval mode."""
    pt2e = _torchao_pt2e()
    nn.Module.train(self, mode)
    if mode:
        pt2e.move_exported_model_to_train(self)
        if self.meta.get(BN_FROZEN):
            compat.set_exported_batchnorm_training(self, training=False)
    else:
        pt2e.move_exported_model_to_eval(self)
    _set_dropout(self, training=mode)
    return self


def _eval(self: torch.fx.GraphModule) -> torch.fx.GraphModule:
    return self.train(False)


def _allow_train_eval(graph_module: torch.fx.GraphModule) -> None:
    """Give a prepared graph (and its deep copies) our `train()`/`eval()` (torch.export's module
    refuses them); a converted graph keeps nn.Module's."""
    if graph_module.meta.get(CONVERTED):
        return
    graph_module.train = types.MethodType(_train_or_eval, graph_module)  # type: ignore[method-assign]
    graph_module.eval = types.MethodType(_eval, graph_module)  # type: ignore[method-assign]


def prepare_qat(net: nn.Module, example_input: Any, backend: str = "x86") -> torch.fx.GraphModule:
    """Export `net` in training mode and insert fake quantization (a new GraphModule that
    holds `net`'s parameters); it runs once on `example_input` so a failure shows here."""
    _torchao_pt2e()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    check_backend(backend)
    was_training = net.training
    with measuring(net):
        output = call_net(net, example_input)
    module = net if isinstance(output, torch.Tensor) else _logits_module(net)
    args, kwargs = batch_example(example_input)
    try:
        exported = torch.export.export(
            module.train(), args, kwargs=kwargs, dynamic_shapes=dynamic_batch(args, kwargs)
        ).module()
    except Exception as exc:  # torch.export raises many types for what it cannot capture
        first = str(exc).strip().splitlines()
        raise ConfigError(
            f"model.net ({type(net).__name__}) cannot be captured by torch.export for QAT: "
            f"{first[0] if first else type(exc).__name__}. Its forward must be exportable: no "
            "data-dependent Python control flow"
        ) from exc
    finally:
        net.train(was_training)
    quantizer = make_quantizer(is_qat=True, reduce_range=backend in REDUCED_RANGE_BACKENDS)
    prepared = prepare_qat_pt2e(exported, quantizer)
    _drop_batch_counters(prepared)
    _follow_input_device(prepared)
    _allow_train_eval(prepared)
    compat.on_graph_module_deepcopy(prepared, _allow_train_eval)
    prepared.train(was_training)
    try:  # once, ranges untouched: fails here, not in the first QAT batch
        with measuring(prepared):
            call_net(prepared, example_input)
    except Exception as exc:
        raise ConfigError(
            f"model.net ({type(net).__name__}) prepared for QAT fails on its example input "
            f"{describe_input(example_input)} ({type(exc).__name__}: {exc})"
        ) from exc
    return prepared


def set_qat_state(
    net: nn.Module, fake_quant: bool, observe: bool, freeze_bn: bool | None = None
) -> None:
    """Switch fake quantization, observers and (unless None) batch-norm statistics updates.

    A frozen batch norm stays in eval mode when the graph goes back to `train()`; unfreezing
    switches it to training mode only while the graph is in training mode.
    """
    pt2e = _torchao_pt2e()
    net.apply(pt2e.enable_fake_quant if fake_quant else pt2e.disable_fake_quant)
    net.apply(pt2e.enable_observer if observe else pt2e.disable_observer)
    if freeze_bn is not None and isinstance(net, torch.fx.GraphModule):
        net.meta[BN_FROZEN] = freeze_bn
        if net.training:
            compat.set_exported_batchnorm_training(net, training=not freeze_bn)


def observe_once(prepared: nn.Module, example_input: Any) -> None:
    """Run the observers once on `example_input` (a prepared graph about to be converted before
    its trained state loads: its ranges must be finite, their values do not matter)."""
    pt2e = _torchao_pt2e()
    prepared.apply(pt2e.enable_observer)
    with torch.no_grad():
        call_net(prepared, move_to(example_input, device_of(prepared)))
    prepared.apply(pt2e.disable_observer)


# -- convert ----------------------------------------------------------------------------------
def _drop_unused_attributes(graph_module: torch.fx.GraphModule) -> None:
    """Delete parameters, buffers and submodules the graph no longer reads (convert_pt2e leaves
    the float weights and batch-norm statistics it folded into int8 constants)."""
    graph_module.graph.eliminate_dead_code()
    used = {n.target for n in graph_module.graph.nodes if n.op == "get_attr"}
    names = [n for n, _ in graph_module.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in graph_module.named_buffers(remove_duplicate=False)]
    for name in names:
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph_module.get_submodule(owner) if owner else graph_module, attr)
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()


def convert_int8(net: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 GraphModule (q/dq ops, int8 weights) of a QAT-prepared `net`, on the CPU in eval
    mode (`net` is left as it was)."""
    _torchao_pt2e()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model = copy.deepcopy(net).cpu()
    model.eval()
    converted = convert_pt2e(model)
    for name in ("train", "eval"):  # inference only: train()/eval() set the flags alone
        converted.__dict__.pop(name, None)
    converted.meta.pop(BN_FROZEN, None)
    converted.meta[CONVERTED] = True
    _set_dropout(converted, training=False)  # inference only
    _drop_unused_attributes(converted)
    return converted.eval()


def _is_op(node: Any, name: str) -> bool:
    """Whether `node` calls the quantize/dequantize op `name` (e.g. "quantize_per_tensor")."""
    target = f"quantized_decomposed.{name}"
    return getattr(node, "op", None) == "call_function" and str(node.target).startswith(target)


def _activation_nodes(converted: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The per-tensor quantize/dequantize nodes of activations, in graph order."""
    return [
        n
        for n in converted.graph.nodes
        if _is_op(n, "quantize_per_tensor.default") or _is_op(n, "dequantize_per_tensor.default")
    ]


def activation_qparams(converted: torch.fx.GraphModule) -> list[list[float | int]]:
    """[scale, zero_point] of every activation quantize/dequantize op, in graph order (plain
    data: they are constants of the graph, not tensors of its state dict)."""
    return [[float(n.args[1]), int(n.args[2])] for n in _activation_nodes(converted)]


def set_activation_qparams(converted: torch.fx.GraphModule, qparams: list) -> None:
    """Put `activation_qparams` of a converted graph into `converted`, a conversion of the same
    network."""
    nodes = _activation_nodes(converted)
    if len(nodes) != len(qparams):
        raise ConfigError(
            f"the checkpoint's int8 network has {len(qparams)} activation quantize/dequantize "
            f"ops, the network rebuilt from its config {len(nodes)}: the network's code "
            "changed since the checkpoint was written"
        )
    for node, (scale, zero_point) in zip(nodes, qparams):
        node.args = (node.args[0], float(scale), int(zero_point), *node.args[3:])
    converted.recompile()


def float_view(converted: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The fp32 network a converted graph computes: activation quantize/dequantize pairs
    removed, weights dequantized once into fp32 buffers."""
    view = copy.deepcopy(converted)
    graph = view.graph
    for node in list(graph.nodes):
        if not (_is_op(node, "dequantize_per_tensor") or _is_op(node, "dequantize_per_channel")):
            continue
        source = node.args[0]
        if _is_op(source, "quantize_per_tensor"):  # an activation: skip the round trip
            node.replace_all_uses_with(source.args[0])
        elif source.op == "get_attr":  # a weight: dequantize it now
            args = [_attribute(view, a) for a in node.args]
            name = f"_float_{source.target}"
            view.register_buffer(name, node.target(*args))
            with graph.inserting_before(node):
                replacement = graph.get_attr(name)
            node.replace_all_uses_with(replacement)
    _drop_unused_attributes(view)
    return view


def _attribute(module: nn.Module, arg: Any) -> Any:
    """The value of a graph argument: the tensor a get_attr node reads, else the argument."""
    if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
        owner, _, attr = str(arg.target).rpartition(".")
        return getattr(module.get_submodule(owner) if owner else module, attr)
    return arg
