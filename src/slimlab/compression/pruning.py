"""Structured pruning that really removes channels: the callback behind `compression=prune`.

torch-pruning's DependencyGraph finds the layers that are coupled (a conv's output channels,
the batch norm after it, the next conv's input channels, every layer on a residual path) and
removes whole channels from all of them, so the network is physically smaller and faster,
not masked. `StructuredPruning` works on any `SlimModule` (see `slimlab.models.base`): it
reads `net` and `example_input_array`, adds its sparsity loss with `add_loss_term` and
records each step with `record_structure`.

Timeline of `StructuredPruning(start_epoch=s, end_epoch=e, steps=n)`:

- `setup`: the network must trace, the named layers must exist and the target must be
  reachable (errors before training starts). The classifier head (the last Conv/Linear the
  forward pass runs) always keeps its outputs.
- until the last step: with `regularization > 0` (importance=bn_scale) an L1 penalty on the
  batch-norm scales is added to the training loss (network slimming), logged as
  train/prune_sparsity.
- step k = 0..n-1 runs before the training batch at epoch s + k * (e - s) / n (a step at a
  whole epoch runs after the previous epoch's validation and checkpoint). Rank 0 ranks the
  channels and prunes; the other DDP ranks replay its plan, so all ranks stay identical. Every
  rank then records the step, rewraps DDP, rebuilds the optimizer and LR scheduler (the
  schedule continues where it was; optimizer moments start fresh) and makes the checkpoint and
  early-stopping callbacks forget their best: "best" is chosen among checkpoints of the new
  structure, so `trainer.test(ckpt_path=best)` tests the pruned network.
- `on_train_end`: dense vs pruned params, MACs, size, CPU latency and validation metrics go
  into `pl_module.compression_report["pruning"]` (hence metrics.json) and to the loggers.

What a checkpoint holds: each step as a structure entry ``{"kind": "prune", "history": ...}``,
torch-pruning's pruning history (root layer name, output or input channels, channel indices:
plain lists). `restore_pruning` replays it on a freshly built network before the weights load,
so pruned checkpoints load through `load_from_checkpoint`, `eval.py` and `ckpt_path=` resume
while the file opens with ``torch.load(weights_only=True)``. The number of steps done is the
number of such entries on the module, so a resume neither repeats nor skips a step; the
callback's own state (dense measurements, torch-pruning's initial channel counts, Taylor
gradients awaiting a step) is in `state_dict`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch_pruning as tp
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from torch import nn

from slimlab.compression import report as measure_lib
from slimlab.compression.rewire import forget_best, rebuild_optimizers, rewrap_ddp
from slimlab.models.base import SlimModule
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.logging import get_logger

log = get_logger(__name__)

KEY = "compression.prune"  # config key named in error messages
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "random")
RANKINGS = ("local", "global")
TARGETS = ("channels", "params", "macs")
# channel ratios scanned when searching for a params / MACs target (see solve_ratio)
SCAN_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
LOSS_TERM = "prune_sparsity"
REPORT_KEYS = ("enabled", "latency", "repeats")
PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)
BATCH_NORMS = nn.modules.batchnorm._BatchNorm


# -- torch-pruning, as plain functions ----------------------------------------------------------
@contextlib.contextmanager
def autograd_on() -> Iterator[None]:
    """torch-pruning traces with autograd: leave any no_grad / inference_mode for the block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _device(net: nn.Module) -> torch.device:
    return next(iter(net.parameters()), torch.empty(0)).device


def layer_widths(net: nn.Module) -> dict[str, int]:
    """Output channels (Conv) and output features (Linear) of every layer, by name."""
    widths = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            widths[name] = int(m.out_features)
    return widths


def find_head(net: nn.Module, example_input: torch.Tensor) -> str | None:
    """Name of the last Conv/Linear layer a forward pass runs: the classifier head."""
    names = {m: name for name, m in net.named_modules()}
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda m, i, o: order.append(names[m]))
        for m in net.modules()
        if isinstance(m, PRUNABLE)
    ]
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(example_input.to(_device(net)))
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    return order[-1] if order else None


class _CachedImportance:
    """Scores each group once per pruning step (the search below plans many ratios)."""

    def __init__(self, importance: Any) -> None:
        self.importance = importance
        self.cache: dict[tuple, Any] = {}

    def __call__(self, group: Any, **kwargs: Any) -> Any:
        root = group[0]
        key = (id(root.dep.target.module), root.dep.handler, len(root.idxs))
        if key not in self.cache:
            self.cache[key] = self.importance(group, **kwargs)
        return self.cache[key]


def make_importance(name: str) -> Any:
    """The torch-pruning importance criterion called `name` (see IMPORTANCES)."""
    if name in ("l1", "l2"):
        return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)
    if name == "bn_scale":
        return tp.importance.BNScaleImportance()
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "random":
        return tp.importance.RandomImportance()
    raise ConfigError(f"{KEY}.importance={name!r} is unknown: give one of {list(IMPORTANCES)}")


def build_pruner(
    net: nn.Module,
    example_input: torch.Tensor,
    importance: str = "l1",
    ranking: str = "local",
    round_to: int | None = None,
    ignored_layers: Sequence[str] = (),
) -> tp.pruner.BasePruner:
    """A torch-pruning pruner over `net` whose named layers keep their output channels."""
    modules = dict(net.named_modules())
    was_training = net.training
    try:
        with autograd_on():
            pruner = tp.pruner.BasePruner(
                net,
                example_input.to(_device(net)),
                importance=_CachedImportance(make_importance(importance)),
                global_pruning=ranking == "global",
                pruning_ratio=0.0,
                ignored_layers=[modules[name] for name in ignored_layers],
                round_to=round_to,
            )
    finally:
        net.train(was_training)  # tracing leaves the network in eval mode
    return pruner


def _plan(pruner: tp.pruner.BasePruner, ratio: float) -> Iterator[Any]:
    """The groups (layers + channel indices) a step to `ratio` of the initial channels removes."""
    pruner.iterative_steps, pruner.current_step = 1, 0
    pruner.per_step_pruning_ratio = [0.0, ratio]
    return pruner.step(interactive=True)


def estimate_removed(pruner: tp.pruner.BasePruner, ratio: float, spatial: dict) -> dict:
    """Params and MACs (per sample) a step to `ratio` would remove, from Conv/Linear/BN widths.

    `spatial[module]` is the number of output positions per channel of each Conv/Linear (from
    one dense forward pass); layers of other types are not counted.
    """
    out_cut: dict[nn.Module, set[int]] = {}
    in_cut: dict[nn.Module, set[int]] = {}
    for group in _plan(pruner, ratio):
        for dep, idxs in group:
            module = dep.target.module
            if isinstance(module, nn.Module):
                cut = out_cut if pruner.DG.is_out_channel_pruning_fn(dep.handler) else in_cut
                cut.setdefault(module, set()).update(int(i) for i in idxs)
    removed = {"params": 0, "macs": 0}
    for module in set(out_cut) | set(in_cut):
        n_out, n_in = len(out_cut.get(module, ())), len(in_cut.get(module, ()))
        if isinstance(module, BATCH_NORMS):
            removed["params"] += 2 * n_out if module.affine else 0
            continue
        if isinstance(module, nn.modules.conv._ConvNd):
            c_out, c_in, groups = module.out_channels, module.in_channels, module.groups
            kernel = math.prod(module.kernel_size)
            if groups > 1 and groups == c_in:  # depthwise: groups follow the channels
                new_in_per_group, old_in_per_group = 1, 1
            else:
                new_in_per_group, old_in_per_group = (c_in - n_in) / groups, c_in / groups
        elif isinstance(module, nn.Linear):
            c_out, c_in, kernel = module.out_features, module.in_features, 1
            new_in_per_group, old_in_per_group = c_in - n_in, c_in
        else:
            continue
        old = c_out * old_in_per_group * kernel
        new = (c_out - n_out) * new_in_per_group * kernel
        bias = n_out if getattr(module, "bias", None) is not None else 0
        removed["params"] += int(old - new) + bias
        removed["macs"] += int((old - new) * spatial.get(module, 0))
    return removed


def _spatial_sizes(net: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, int]:
    sizes: dict[nn.Module, int] = {}

    def hook(m: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        channels = m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
        sizes[m] = output.numel() // channels

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, PRUNABLE)]
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()(example_input[:1].to(_device(net)))
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    return sizes


def _metric(net: nn.Module, example_input: torch.Tensor, metric: str) -> int:
    if metric == "params":
        return measure_lib.count_params(net)
    return measure_lib.count_macs(net, example_input[:1])


def solve_ratio(
    pruner: tp.pruner.BasePruner,
    net: nn.Module,
    example_input: torch.Tensor,
    metric: str,
    goal: float,
    low: float = 0.0,
) -> float:
    """The smallest channel ratio (of the initial channels) that brings `metric` to `goal`.

    `metric` is "params" or "macs" of `net` as `slimlab.compression.report` counts them; the
    search plans steps without applying them. What a ratio removes is not monotonic
    (torch-pruning skips a layer whose rounded width would reach 0), so a coarse scan finds a
    ratio that reaches `goal` and bisection narrows it, always keeping one that reaches it.
    Out of reach: the scanned ratio that removes the most.
    """
    spatial = _spatial_sizes(net, example_input)
    now = _metric(net, example_input, metric)
    if now <= goal:
        return low

    def removed(ratio: float) -> int:
        return estimate_removed(pruner, ratio, spatial)[metric]

    scan = [r for r in SCAN_RATIOS if r > low]
    high = next((r for r in scan if now - removed(r) <= goal), None)
    if high is None:
        return max(scan, key=removed)
    low = max([low, *(r for r in scan if r < high)])
    for _ in range(12):  # ~1e-4 of a ratio: below one channel of any real layer
        middle = (low + high) / 2
        if now - removed(middle) <= goal:
            high = middle
        else:
            low = middle
    return high


def most_removed(
    pruner: tp.pruner.BasePruner, net: nn.Module, example_input: torch.Tensor, metric: str
) -> float:
    """The largest fraction of `metric` ("params" or "macs") one step can take from `net`."""
    spatial = _spatial_sizes(net, example_input)
    best = max(estimate_removed(pruner, r, spatial)[metric] for r in SCAN_RATIOS)
    return best / _metric(net, example_input, metric)


def prune_to(pruner: tp.pruner.BasePruner, ratio: float) -> list[list]:
    """Prune `pruner`'s network to `ratio` of its initial channels; return the step's history."""
    start = len(pruner.DG.pruning_history())
    for group in _plan(pruner, ratio):
        group.prune()
    return [
        [str(name), bool(out), [int(i) for i in idxs]]
        for name, out, idxs in pruner.DG.pruning_history()[start:]
    ]


def apply_history(net: nn.Module, example_input: torch.Tensor, history: list) -> None:
    """Remove the channels torch-pruning's pruning `history` lists from `net`, in order."""
    was_training = net.training
    try:
        with autograd_on():
            graph = tp.DependencyGraph().build_dependency(
                net, example_inputs=example_input.to(_device(net))
            )
    finally:
        net.train(was_training)
    graph.load_pruning_history([[name, bool(out), list(idxs)] for name, out, idxs in history])


def restore_pruning(module: SlimModule, entry: dict) -> None:
    """Replay a "prune" structure entry on a module's network (before its weights load)."""
    apply_history(module.net, module.example_input_array, entry["history"])
    expected = entry.get("widths")
    if expected is not None and layer_widths(module.net) != expected:
        raise RuntimeError(
            f"replaying pruning step {entry.get('step')} gave layer widths "
            f"{layer_widths(module.net)}, the checkpoint recorded {expected}: the network "
            "built from the checkpoint's config differs from the one that was pruned"
        )


def steps_done(module: SlimModule) -> int:
    """Pruning steps already applied to `module` (its "prune" structure entries)."""
    return sum(1 for entry in module.structure_log if entry.get("kind") == "prune")


def _val_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {
        "val_" + key[4:]: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("val/") and not key.endswith("_best") and value.numel() == 1
    }


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> dict[str, float]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _flatten(f"{prefix}/{key}", item, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)
    return out


# -- the callback ---------------------------------------------------------------------------------
class StructuredPruning(L.Callback):
    """Remove whole channels during training with torch-pruning, then fine-tune.

    Args:
        amount: the fraction to remove, in (0, 1): of the channels (`target="channels"`), or of
            the network's parameters / MACs (`target="params"` / `"macs"`).
        target: what `amount` is a fraction of. For params and MACs the channel ratio is found
            by search at each step.
        importance: how channels are ranked: "l1" / "l2" (weight magnitude of the whole coupled
            group), "bn_scale" (|batch-norm scale|), "taylor" (|weight x gradient| of the last
            training batch), "random" (a baseline).
        ranking: "local" removes `amount` of every layer's channels; "global" ranks all channels
            together (layers end with different widths).
        start_epoch: the epoch at whose start the first step runs (>= 1 for taylor, which needs a
            trained batch's gradients).
        end_epoch: with `steps > 1` the steps are spread evenly over [start_epoch, end_epoch)
            (None: one step per epoch). The removed fraction grows linearly to `amount`.
        steps: pruning steps (1: one-shot).
        round_to: keep every pruned layer's channel count a multiple of this (None: any count).
        ignored_layers: names (from `net.named_modules()`) of layers whose output channels stay;
            the classifier head always stays.
        regularization: weight of an L1 penalty on batch-norm scales until the last step
            (network slimming); needs importance="bn_scale".
        report: measure dense vs pruned into `compression_report`; True, False, or a mapping
            with `enabled`, `latency` (measure CPU latency at batch 1 and 64) and `repeats`.
    """

    def __init__(
        self,
        amount: float = 0.5,
        target: str = "channels",
        importance: str = "l1",
        ranking: str = "local",
        start_epoch: int = 1,
        end_epoch: int | None = None,
        steps: int = 1,
        round_to: int | None = 8,
        ignored_layers: Sequence[str] = (),
        regularization: float = 0.0,
        report: bool | Mapping[str, Any] = True,
    ) -> None:
        require(
            isinstance(amount, int | float) and 0.0 < float(amount) < 1.0,
            f"{KEY}.amount={amount} is out of range: give a fraction in (0, 1)",
        )
        require(
            target in TARGETS, f"{KEY}.target={target!r} is unknown: give one of {list(TARGETS)}"
        )
        make_importance(importance)  # raises for an unknown name
        require(
            ranking in RANKINGS,
            f"{KEY}.ranking={ranking!r} is unknown: give one of {list(RANKINGS)}",
        )
        require(int(steps) >= 1, f"{KEY}.steps={steps} is out of range: give 1 or more")
        require(
            int(start_epoch) >= 0, f"{KEY}.start_epoch={start_epoch} is out of range: give >= 0"
        )
        require(
            end_epoch is None or int(end_epoch) > int(start_epoch),
            f"{KEY}.end_epoch={end_epoch} is not after start_epoch={start_epoch}: give a later "
            "epoch, or null for one step per epoch",
        )
        require(
            importance != "taylor" or int(start_epoch) >= 1,
            f"{KEY}.start_epoch={start_epoch} leaves importance=taylor no gradients to rank by: "
            "give start_epoch >= 1",
        )
        require(
            round_to is None or int(round_to) >= 1,
            f"{KEY}.round_to={round_to} is out of range: give a channel multiple >= 1, or null",
        )
        require(
            float(regularization) >= 0.0,
            f"{KEY}.regularization={regularization} is out of range: give a weight >= 0",
        )
        require(
            float(regularization) == 0.0 or importance == "bn_scale",
            f"{KEY}.regularization={regularization} needs importance=bn_scale (an L1 penalty on "
            f"batch-norm scales); give regularization=0 for importance={importance}",
        )
        require(
            isinstance(ignored_layers, Sequence) and not isinstance(ignored_layers, str),
            f"{KEY}.ignored_layers={ignored_layers!r} is not a list: give layer names, e.g. "
            "[stem.0]",
        )
        if isinstance(report, bool):
            report = {"enabled": report}
        unknown = sorted(set(report) - set(REPORT_KEYS))
        require(not unknown, f"{KEY}.report has unknown keys {unknown}: give {list(REPORT_KEYS)}")
        repeats = int(report.get("repeats", 20))
        require(repeats >= 1, f"{KEY}.report.repeats={repeats} is out of range: give >= 1")

        self.amount = float(amount)
        self.target = target
        self.importance = importance
        self.ranking = ranking
        self.start_epoch = int(start_epoch)
        self.steps = int(steps)
        self.end_epoch = self.start_epoch + self.steps if end_epoch is None else int(end_epoch)
        self.round_to = None if round_to is None else int(round_to)
        self.ignored_layers = [str(name) for name in ignored_layers]
        self.regularization = float(regularization)
        self.report_enabled = bool(report.get("enabled", True))
        self.report_latency = bool(report.get("latency", True))
        self.report_repeats = repeats
        self._head: str | None = None
        # state (see state_dict): torch-pruning's initial channels per ranking scope, the dense
        # network's measurements and validation metrics, Taylor gradients awaiting a step
        self._scope_channels: dict[str, int] = {}
        self._dense: dict[str, Any] | None = None
        self._ratios: list[float] = []
        self._grads: dict[str, torch.Tensor] = {}

    # -- checks before training --------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        require(
            isinstance(pl_module, SlimModule),
            f"{KEY} needs a slimlab.models.SlimModule, got {type(pl_module).__name__}",
        )
        strategy = trainer.strategy
        require(
            isinstance(strategy, SingleDeviceStrategy | DDPStrategy)
            and not isinstance(strategy, DeepSpeedStrategy),
            f"{KEY} does not support the {type(strategy).__name__}: train on one device or with "
            "trainer=ddp / ddp_sim (pruning rewrites the network that other strategies shard)",
        )
        max_epochs = trainer.max_epochs
        if not trainer.fast_dev_run and max_epochs is not None and max_epochs >= 0:
            require(
                self.start_epoch < max_epochs,
                f"{KEY}.start_epoch={self.start_epoch} is not before trainer.max_epochs="
                f"{max_epochs}: pruning would never run; give start_epoch < max_epochs",
            )
            if self.end_epoch > max_epochs and self.steps > 1:
                log.warning(
                    f"{KEY}: the schedule runs until epoch {self.end_epoch}, after trainer."
                    f"max_epochs={max_epochs}: later steps run only if training is resumed "
                    "with more epochs"
                )
        self._check_network(pl_module)

    def _check_network(self, pl_module: SlimModule) -> None:
        net, example = pl_module.net, pl_module.example_input_array
        modules = dict(net.named_modules())
        for name in self.ignored_layers:
            require(
                name in modules and name != "",
                f"{KEY}.ignored_layers: {name!r} is not a layer of model.net "
                f"({type(net).__name__}); its layers include {list(layer_widths(net))[:8]}",
            )
        if self.importance == "bn_scale":
            require(
                any(isinstance(m, BATCH_NORMS) for m in net.modules()),
                f"{KEY}.importance=bn_scale needs batch-norm layers, and model.net "
                f"({type(net).__name__}) has none: give importance=l1",
            )
        try:
            self._head = find_head(net, example)
            # nothing is trained yet: Taylor (weight x gradient) stands in as weight magnitude
            importance = "l1" if self.importance == "taylor" else self.importance
            pruner = build_pruner(
                net, example, importance, self.ranking, self.round_to, self._ignored(net)
            )
            groups = list(
                pruner.DG.get_all_groups(
                    ignored_layers=pruner.ignored_layers,
                    root_module_types=pruner.root_module_types,
                )
            )
        except ConfigError:
            raise
        except Exception as exc:  # torch-pruning raises many types for what it cannot trace
            raise ConfigError(
                f"model.net ({type(net).__name__}) cannot be traced by torch-pruning: {exc!r}. "
                "Its forward must take example_input_array and return tensors built by autograd"
            ) from exc
        require(
            len(groups) > 0,
            f"model.net ({type(net).__name__}) has no channels {KEY} may remove: it needs Conv "
            f"or Linear layers besides the head ({self._head}) and {KEY}.ignored_layers",
        )
        if self.target != "channels" and steps_done(pl_module) == 0:
            with autograd_on():
                most = most_removed(pruner, net, example, self.target)
            require(
                self.amount <= most,
                f"{KEY}.amount={self.amount} of the {self.target} is out of reach: removing "
                f"channels can take at most {most:.3f} of them from model.net "
                f"({type(net).__name__}); give a smaller amount",
            )

    def _ignored(self, net: nn.Module) -> list[str]:
        names = list(self.ignored_layers)
        if self._head is not None and self._head not in names:
            names.append(self._head)
        return names

    # -- the schedule -----------------------------------------------------------------------
    def _step_position(self, k: int, batches: float) -> tuple[int, int]:
        """(epoch, batch index) before which step `k` (0-based) runs."""
        span = self.end_epoch - self.start_epoch
        if math.isinf(batches) or batches <= 0:
            return self.start_epoch + (k * span) // self.steps, 0
        batches = int(batches)
        position = self.start_epoch * batches + (k * span * batches) // self.steps
        return position // batches, position % batches

    def _due(self, trainer: L.Trainer, pl_module: SlimModule, epoch: int, batch_idx: int) -> bool:
        k = steps_done(pl_module)
        if k >= self.steps:
            return False
        return (epoch, batch_idx) >= self._step_position(k, trainer.num_training_batches)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.regularization > 0 and steps_done(pl_module) < self.steps:
            pl_module.add_loss_term(LOSS_TERM, self._sparsity_term(pl_module))

    def _sparsity_term(self, pl_module: SlimModule) -> Any:
        weight, ignored = self.regularization, self._ignored(pl_module.net)

        def term(batch: Any, logits: torch.Tensor) -> torch.Tensor:
            scales = [
                m.weight.abs().sum()
                for name, m in pl_module.net.named_modules()
                if isinstance(m, BATCH_NORMS)
                and m.affine
                and not any(name == i or name.startswith(i + ".") for i in ignored)
            ]
            return weight * torch.stack(scales).sum() if scales else logits.new_zeros(())

        return term

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fast_dev_run:
            return
        while self._due(trainer, pl_module, trainer.current_epoch, batch_idx):
            self._prune_step(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if steps_done(pl_module) >= self.steps:
            return
        if self.importance == "taylor" and trainer.is_global_zero:
            following = (trainer.current_epoch, batch_idx + 1)
            if batch_idx + 1 >= trainer.num_training_batches:
                following = (trainer.current_epoch + 1, 0)
            if trainer.fast_dev_run or self._due(trainer, pl_module, *following):
                self._grads = {  # kept (and checkpointed) until the step uses them
                    name: p.grad.detach().clone()
                    for name, p in pl_module.net.named_parameters()
                    if p.grad is not None
                }
        if trainer.fast_dev_run:  # one batch only: run the whole schedule after it
            while steps_done(pl_module) < self.steps:
                self._prune_step(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.remove_loss_term(LOSS_TERM)
        if self.report_enabled and steps_done(pl_module) > 0 and trainer.is_global_zero:
            self._report(trainer, pl_module)

    # -- one step ---------------------------------------------------------------------------
    def _prune_step(self, trainer: L.Trainer, pl_module: SlimModule) -> None:
        k = steps_done(pl_module)
        others = sorted({e["kind"] for e in pl_module.structure_log if e["kind"] != "prune"})
        require(
            not others,
            f"{KEY} step {k + 1} would prune a network that {others} already rewrote: pruning "
            "must come first (prune -> distill -> quantize); finish the pruning schedule before "
            "the other compression changes the network",
        )
        net = pl_module.net
        example = pl_module.example_input_array.to(pl_module.device)
        plan: dict[str, Any] | None = None
        error: Exception | None = None
        if trainer.is_global_zero:
            try:
                if k == 0:
                    self._measure_dense(trainer, net, example)
                plan = self._plan_and_prune(net, example, k)
            except Exception as exc:  # tell the other ranks instead of leaving them waiting
                plan, error = {"error": repr(exc)}, exc
        plan = trainer.strategy.broadcast(plan, src=0)
        if error is not None:
            raise error
        if "error" in plan:
            raise RuntimeError(f"{KEY}: step {k + 1} failed on rank 0: {plan['error']}")
        if not trainer.is_global_zero:
            apply_history(net, example, plan["history"])
        self._scope_channels = dict(plan["scope_channels"])
        self._ratios.append(float(plan["ratio"]))
        # a Taylor step due at this same batch (catching up, or fast_dev_run) ranks by the
        # gradients torch-pruning just pruned along; a later one takes a fresh snapshot
        self._grads = {}
        if self.importance == "taylor" and k + 1 < self.steps and trainer.is_global_zero:
            self._grads = {
                name: p.grad.detach().clone()
                for name, p in net.named_parameters()
                if p.grad is not None
            }
        for p in net.parameters():
            p.grad = None

        widths = layer_widths(net)
        pl_module.record_structure(
            {
                "kind": "prune",
                "step": k + 1,
                "steps": self.steps,
                "importance": self.importance,
                "ratio": float(plan["ratio"]),
                "history": plan["history"],
                "widths": widths,
            }
        )
        pl_module.net_changed()
        rewrap_ddp(trainer, pl_module)
        rebuild_optimizers(trainer)
        forget_best(trainer)
        if k + 1 == self.steps:
            pl_module.remove_loss_term(LOSS_TERM)
        if trainer.is_global_zero:
            self._log_step(trainer, pl_module, k + 1, widths)

    def _plan_and_prune(self, net: nn.Module, example: torch.Tensor, k: int) -> dict[str, Any]:
        """Rank channels and prune `net` for step `k`; return the plan the other ranks replay."""
        with torch.random.fork_rng(devices=[]), autograd_on():
            torch.manual_seed(torch.initial_seed() + k)  # importance=random: reproducible steps
            for name, p in net.named_parameters():
                if name in self._grads:
                    p.grad = self._grads[name].to(p.device)
            pruner = build_pruner(
                net, example, self.importance, self.ranking, self.round_to, self._ignored(net)
            )
            pruner._scope_initial_channels.update(self._scope_channels)
            fraction = self.amount * (k + 1) / self.steps
            if self.target == "channels":
                ratio = fraction
            else:
                assert self._dense is not None
                goal = (1.0 - fraction) * self._dense[self.target]
                ratio = solve_ratio(pruner, net, example, self.target, goal, self._last_ratio())
            history = prune_to(pruner, ratio)
        return {
            "history": history,
            "ratio": ratio,
            "scope_channels": {str(k): int(v) for k, v in pruner._scope_initial_channels.items()},
        }

    def _last_ratio(self) -> float:
        return self._ratios[-1] if self._ratios else 0.0

    def _measure_dense(self, trainer: L.Trainer, net: nn.Module, example: torch.Tensor) -> None:
        latency = self.report_enabled and self.report_latency
        dense = measure_lib.measure(net, example, repeats=self.report_repeats, latency=latency)
        dense.update(_val_metrics(trainer))
        self._dense = dense

    def _log_step(
        self, trainer: L.Trainer, pl_module: SlimModule, step: int, widths: dict[str, int]
    ) -> None:
        example = pl_module.example_input_array[:1]
        params = measure_lib.count_params(pl_module.net)
        macs = measure_lib.count_macs(pl_module.net, example)
        metrics = {"prune/step": float(step), "prune/params": params, "prune/macs": macs}
        metrics.update({f"prune/width/{name}": width for name, width in widths.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        log.info(
            f"Pruning step {step}/{self.steps} (epoch {trainer.current_epoch}): {params} params, "
            f"{macs} MACs; widths {widths}"
        )

    def _report(self, trainer: L.Trainer, pl_module: SlimModule) -> None:
        example = pl_module.example_input_array.cpu()
        after = measure_lib.measure(
            pl_module.net, example, repeats=self.report_repeats, latency=self.report_latency
        )
        after.update(_val_metrics(trainer))
        before = dict(self._dense or {})
        if not self.report_latency:
            before = {k: v for k, v in before.items() if not k.startswith("latency_ms")}
        section = {
            "method": (
                f"{self.ranking} {self.importance} to {self.amount} of the {self.target} in "
                f"{self.steps} step(s), round_to={self.round_to}"
            ),
            "steps": steps_done(pl_module),
            "channel_ratios": list(self._ratios),
            **measure_lib.compare(before, after),
            "widths": layer_widths(pl_module.net),
        }
        if "val_acc" in before and "val_acc" in after:
            section["val_acc_change"] = after["val_acc"] - before["val_acc"]
        measure_lib.add_section(pl_module, "pruning", section)
        flat = _flatten(
            "compression/pruning", {k: v for k, v in section.items() if k != "widths"}, {}
        )
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=trainer.global_step)
        change = {k: v for k, v in section.items() if k.endswith("_ratio") or "speedup" in k}
        log.info(f"Pruning report: {change}")

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "scope_channels": dict(self._scope_channels),
            "dense": self._dense,
            "ratios": list(self._ratios),
        }
        if self._grads:
            state["taylor_grads"] = dict(self._grads)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._scope_channels = dict(state_dict.get("scope_channels", {}))
        self._dense = state_dict.get("dense")
        self._ratios = list(state_dict.get("ratios", []))
        self._grads = dict(state_dict.get("taylor_grads", {}))
