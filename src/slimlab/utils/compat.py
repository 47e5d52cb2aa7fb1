"""The one place SlimLab touches other libraries' private APIs (Lightning, Hydra, torch-pruning).

Each function wraps one private attribute or internal call, and `tests/utils/test_compat.py`
pins it to the installed versions: when a library moves an internal, that test fails loudly
instead of a training run misbehaving quietly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# ModelCheckpoint attributes that hold "the best so far" (all in its state_dict)
CHECKPOINT_BEST_FIELDS = (
    "best_k_models",
    "kth_best_model_path",
    "kth_value",
    "best_model_score",
    "best_model_path",
)
# EarlyStopping attributes that hold the wait since the best score
EARLY_STOPPING_BEST_FIELDS = ("wait_count", "best_score")


def _require_attributes(obj: Any, names: Sequence[str], where: str) -> None:
    missing = [name for name in names if not hasattr(obj, name)]
    if missing:
        raise RuntimeError(
            f"{where} no longer has {missing} in this version: update slimlab.utils.compat"
        )


def set_lightning_hydra_subprocess_command(
    command: Callable[[int], tuple[Sequence[str], str]],
) -> None:
    """Make Lightning's DDP subprocess launcher build rank commands with `command` under Hydra.

    Lightning re-runs the command line for ranks 1..N-1; under Hydra it calls the private
    `subprocess_script._hydra_subprocess_cmd(local_rank)`, which we replace.
    """
    from lightning.pytorch.strategies.launchers import subprocess_script

    if not hasattr(subprocess_script, "_hydra_subprocess_cmd"):
        raise RuntimeError(
            "lightning.pytorch.strategies.launchers.subprocess_script._hydra_subprocess_cmd is "
            "gone in this Lightning version: update slimlab.utils.compat"
        )
    subprocess_script._hydra_subprocess_cmd = command


def forget_checkpoint_best(callback: Any) -> None:
    """Make a monitoring `ModelCheckpoint` start its top-k over, as if nothing was saved yet.

    Lightning has no public reset: we write the fields its `__init__` (and its private
    `__init_monitor_mode`) set.
    """
    import torch

    _require_attributes(callback, CHECKPOINT_BEST_FIELDS, "ModelCheckpoint")
    callback.best_k_models = {}
    callback.kth_best_model_path = ""
    callback.kth_value = torch.tensor(torch.inf if callback.mode == "min" else -torch.inf)
    callback.best_model_score = None
    callback.best_model_path = ""


def forget_early_stopping_best(callback: Any) -> None:
    """Make `EarlyStopping` wait from scratch for a new best score."""
    import torch

    _require_attributes(callback, EARLY_STOPPING_BEST_FIELDS, "EarlyStopping")
    callback.wait_count = 0
    callback.best_score = torch.tensor(torch.inf if callback.mode == "min" else -torch.inf)


def set_best_checkpoint(callback: Any, path: str) -> None:
    """Make `path` the file a `ModelCheckpoint` reports as its best (`ckpt_path="best"`).

    QAT saves the int8 model of the best QAT checkpoint itself and points the callback at it.
    """
    _require_attributes(callback, ("best_model_path",), "ModelCheckpoint")
    callback.best_model_path = str(path)


# the BasePruner attributes a schedule's progress is read from and written back to
PRUNER_PROGRESS_FIELDS = (
    "current_step",
    "_scope_initial_channels",
    "initial_total_heads",
    "init_num_heads",
)


def pruner_progress(pruner: Any) -> dict[str, Any]:
    """What a torch-pruning pruner needs to continue its schedule in a new process: its step,
    the initial channel count of each ranking scope (filled by its first step), and the dense
    head counts (all attention modules together, and each q/k/v layer's)."""
    _require_attributes(pruner, PRUNER_PROGRESS_FIELDS, "BasePruner")
    layer_names = {m: name for name, m in pruner.model.named_modules()}
    return {
        "step": int(pruner.current_step),
        "scope_channels": {str(k): int(v) for k, v in pruner._scope_initial_channels.items()},
        "total_heads": int(pruner.initial_total_heads),
        "dense_heads": {layer_names[m]: int(h) for m, h in pruner.init_num_heads.items()},
    }


def resume_pruner(pruner: Any, progress: dict[str, Any]) -> None:
    """Continue a freshly built pruner where `pruner_progress` left it (after a resume the
    network is already pruned, so its initial widths and head counts must come from the saved
    progress)."""
    _require_attributes(pruner, PRUNER_PROGRESS_FIELDS, "BasePruner")
    pruner.current_step = int(progress["step"])
    pruner._scope_initial_channels.update(progress["scope_channels"])
    pruner.initial_total_heads = int(progress.get("total_heads", pruner.initial_total_heads))
    layers = dict(pruner.model.named_modules())
    for name, heads in progress.get("dense_heads", {}).items():
        pruner.init_num_heads[layers[name]] = int(heads)


def dense_heads(pruner: Any) -> dict[Any, int]:
    """Each q/k/v layer's head count before the pruner's first step (restored on resume)."""
    _require_attributes(pruner, ("init_num_heads",), "BasePruner")
    return dict(pruner.init_num_heads)


def set_next_head_removals(pruner: Any, removals: dict[Any, int]) -> None:
    """Make the pruner's next local step remove `removals[layer]` whole heads from the
    attention module of each q/k/v layer.

    torch-pruning 1.6's local step removes ceil(cumulative head ratio x heads left), so over
    several steps heads compound away (4 heads, 0.5 in 2 steps: 4 -> 3 -> 1). Its per-layer
    table of head ratios (`head_pruning_ratio_dict`, by step) is written so that ceil gives
    the count asked (0: no head goes).
    """
    names = ("head_pruning_ratio_dict", "num_heads", "current_step", "iterative_steps")
    _require_attributes(pruner, names, "BasePruner")
    following = pruner.current_step + 1  # step() counts first, then reads the table
    for layer, n in removals.items():
        ratios = [0.0] * (pruner.iterative_steps + 1)
        ratios[following] = (n - 0.5) / pruner.num_heads[layer] if n > 0 else 0.0
        pruner.head_pruning_ratio_dict[layer] = ratios


def loop_batch(pl_module: Any, batch: Any, device: Any) -> Any:
    """`batch` as Lightning's loops hand it to `pl_module`: through the module's or the
    datamodule's `on_before_batch_transfer`, `transfer_batch_to_device` and
    `on_after_batch_transfer` hooks, onto `device` (the module must be attached to a trainer).

    Lightning picks the module's or the datamodule's hook in the private `_call_batch_hook`.
    """
    names = ("_call_batch_hook", "_apply_batch_transfer_handler")
    _require_attributes(pl_module, names, "LightningModule")
    batch = pl_module._call_batch_hook("on_before_batch_transfer", batch, 0)
    return pl_module._apply_batch_transfer_handler(batch, device, 0)


def set_exported_batchnorm_training(model: object, training: bool) -> None:
    """Switch only the batch-norm ops of a torch.export'ed GraphModule to training or eval.

    torchao's public `move_exported_model_to_train/eval` switch batch norm and dropout
    together; QAT freezes batch-norm statistics alone, through the private
    `torchao.quantization.pt2e.export_utils._replace_batchnorm`.
    """
    from torchao.quantization.pt2e import export_utils

    if not hasattr(export_utils, "_replace_batchnorm"):
        raise RuntimeError(
            "torchao.quantization.pt2e.export_utils._replace_batchnorm is gone in this torchao "
            "version: update slimlab.utils.compat"
        )
    export_utils._replace_batchnorm(model, train_to_eval=not training)


# -- Hydra: what a failed job raised (used by SlimLab's sweepers) ------------------------------
def hydra_job_error(result: object) -> BaseException | None:
    """The exception a failed Hydra job raised (a `JobReturn`), else None.

    `JobReturn.return_value` re-raises it after writing "Error executing job" to stderr; a
    sweeper that records the failure and goes on reads the private `_return_value` instead.
    """
    from hydra.core.utils import JobStatus

    if not hasattr(result, "_return_value"):
        raise RuntimeError(
            "hydra.core.utils.JobReturn._return_value is gone in this Hydra version: update "
            "slimlab.utils.compat.hydra_job_error"
        )
    if result.status != JobStatus.FAILED:
        return None
    error = result._return_value
    return error if isinstance(error, BaseException) else None


# -- torchao PT2E: pattern graphs, built once per process --------------------------------------
_PATTERN_CACHE: dict[Any, Any] = {}
_FAST_PATTERNS_INSTALLED = False
_STRICT_PATTERN_GRAPH: Callable | None = None  # torchao's own, kept for the compat test


def _pattern_key(pattern: Any, example_inputs: tuple, is_cuda: bool, kwargs: dict) -> Any:
    """What determines a pattern's graph: its function's code, closure and defaults, and the
    example inputs' shapes and dtypes (values do not matter: torchao matches with literals
    ignored)."""
    import torch

    fn = getattr(pattern, "fn", None) or getattr(pattern, "forward", pattern)
    cells = tuple(c.cell_contents for c in (getattr(fn, "__closure__", None) or ()))

    def spec(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return (tuple(value.shape), value.dtype)
        return value

    key = (
        getattr(fn, "__code__", fn),
        cells,
        getattr(fn, "__defaults__", None),
        tuple(sorted((getattr(fn, "__kwdefaults__", None) or {}).items())),
        tuple(spec(x) for x in example_inputs),
        bool(is_cuda),
        tuple(sorted((k, spec(v)) for k, v in kwargs.items())),
    )
    hash(key)  # TypeError for closures over unhashable values: not cached
    return key


def fast_pt2e_patterns() -> None:
    """Make torchao's PT2E pattern graphs cheap: exported once per process (non-strict), and
    only for the convolution types a graph calls. Idempotent.

    torchao builds every subgraph it matches (QAT conv-bn fusion in `prepare_qat_pt2e`, conv-bn
    folding in `convert_pt2e`, the batch-norm and dropout switches of `move_exported_model_to_
    train/eval`) by a strict `torch.export` of a small function, on every call: one
    `convert_pt2e` of a CNN exported 102 patterns (70-190 s on the development machine). The
    private `utils._get_aten_graph_module_for_pattern` (also imported by name into `qat_utils`)
    becomes a memoized non-strict export (the same aten graphs: converted networks compute
    bit-identical outputs), and `qat_utils._fuse_conv_bn_qat_helper` /
    `_fold_conv_bn_qat_helper` skip the convolution functions (conv1d, conv_transpose2d, ...)
    the graph does not call.
    """
    global _FAST_PATTERNS_INSTALLED
    if _FAST_PATTERNS_INSTALLED:
        return
    import copy

    import torch
    from torchao.quantization.pt2e import qat_utils
    from torchao.quantization.pt2e import utils as pt2e_utils

    names = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")
    _require_attributes(qat_utils, (*names, "_get_aten_graph_module_for_pattern"), "qat_utils")
    _require_attributes(pt2e_utils, ("_get_aten_graph_module_for_pattern",), "pt2e.utils")

    def pattern_graph(
        pattern: Any, example_inputs: tuple, is_cuda: bool = False, **kwargs: Any
    ) -> Any:
        try:
            key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
        except TypeError:
            key = None
        if key is not None and key in _PATTERN_CACHE:
            return copy.deepcopy(_PATTERN_CACHE[key])
        if is_cuda:
            example_inputs = tuple(
                x.cuda() if isinstance(x, torch.Tensor) else x for x in example_inputs
            )
        graph = torch.export.export(pattern, example_inputs, kwargs, strict=False).module()
        # as torchao does: no copy_ nodes for mutated inputs, no guard module
        for node in list(graph.graph.nodes):
            unused_copy = node.target == torch.ops.aten.copy_.default and not node.users
            if unused_copy or (node.op == "call_module" and node.name == "_guards_fn"):
                graph.graph.erase_node(node)
        if hasattr(graph, "_guards_fn"):
            delattr(graph, "_guards_fn")
        graph.graph.eliminate_dead_code()
        graph.recompile()
        if key is not None:
            _PATTERN_CACHE[key] = graph
            return copy.deepcopy(graph)
        return graph

    def only_present(helper: Callable) -> Callable:
        def skip_absent(m: Any, conv_fn: Callable, *args: Any, **kwargs: Any) -> Any:
            called = {
                getattr(getattr(n.target, "overloadpacket", None), "__name__", None)
                for n in m.graph.nodes
                if n.op == "call_function"
            }
            return helper(m, conv_fn, *args, **kwargs) if conv_fn.__name__ in called else m

        return skip_absent

    global _STRICT_PATTERN_GRAPH
    _STRICT_PATTERN_GRAPH = pt2e_utils._get_aten_graph_module_for_pattern
    pt2e_utils._get_aten_graph_module_for_pattern = pattern_graph
    qat_utils._get_aten_graph_module_for_pattern = pattern_graph
    for name in names:
        setattr(qat_utils, name, only_present(getattr(qat_utils, name)))
    _FAST_PATTERNS_INSTALLED = True


def x86_quantization_annotation(**fields: Any) -> Any:
    """A node annotation `X86InductorQuantizer` accepts beside its own.

    It asserts that every annotated node carries its private
    `_X86InductorQuantizationAnnotation`, so a quantizer composed with it (the residual-add
    quantizer in `slimlab.compression.pt2e`) must annotate with that class.
    """
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer

    _require_attributes(
        x86_inductor_quantizer, ("_X86InductorQuantizationAnnotation",), "x86_inductor_quantizer"
    )
    return x86_inductor_quantizer._X86InductorQuantizationAnnotation(**fields)


def on_graph_module_deepcopy(graph_module: Any, hook: Callable[[Any], None]) -> None:
    """Call `hook(copy)` on every deep copy of `graph_module` (and of its copies).

    `GraphModule.__deepcopy__` rebuilds the module from its graph and keeps neither instance
    methods nor most attributes; its private `_register_deepcopy_hook` is the way to carry them.
    """
    _require_attributes(graph_module, ("_register_deepcopy_hook",), "torch.fx.GraphModule")
    graph_module._register_deepcopy_hook(hook)
