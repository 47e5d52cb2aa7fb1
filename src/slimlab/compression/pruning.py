"""Structured pruning that really removes channels: the callback behind `compression=prune`.

torch-pruning's DependencyGraph finds the layers that are coupled (a conv's output channels,
the batch norm after it, the next conv's input channels, every layer on a residual path) and
removes whole channels from all of them, so the network is physically smaller and faster,
not masked. `StructuredPruning` works on any `SlimModule` (see `slimlab.models.base`): it
reads `net` and `example_input_array`, adds its sparsity loss with `add_loss_term` and
records each step with `record_structure`. torch-pruning is driven its own way: one pruner,
built once, stepped along its own schedule. Transformers: the q/k/v layers of every attention
module `slimlab.compression.heads` knows are given to torch-pruning with their head counts, so
whole heads go (`head_amount`) or every head loses the same dims; after each step the modules'
own head-count attributes are rewritten, so `q/k/v width == heads * head_dim`. By default the
token width stays (`keep_token_width`) and `amount` narrows the MLPs.

Timeline of `StructuredPruning(start_epoch=s, end_epoch=e, steps=n)`:

- `setup`: the strategy and the module's contract are checked, the network must trace, the
  named layers must exist and a params/MACs target must be reachable (errors before training
  starts). The classifier head (the last Conv/Linear the forward pass runs) always keeps its
  outputs. The pruner is built here, on the dense network: for `target=channels` with n steps
  to `amount` of the channels (torch-pruning's linear schedule), for a params/MACs target with
  `FINE_STEPS` small steps towards all of them.
- until the last step: with `regularization > 0` (importance=bn_scale) an L1 penalty on the
  batch-norm scales is added to the training loss (network slimming), logged as
  train/prune_sparsity. The best dense epoch's validation metrics are kept (the report's
  "before").
- step k = 0..n-1 runs before the training batch `schedules.prune_step_position` gives (a step
  at a whole epoch runs after the previous epoch's validation and checkpoint). Rank 0 steps the
  pruner once (channels), or until the params/MACs counted by `slimlab.compression.measure`
  reach `1 - amount * (k + 1) / n` of the dense network's; attention modules keep the heads
  `schedules.prune_heads_left` gives for their dense head count. The other DDP ranks replay
  its history, so all ranks stay identical. Every rank then records the step, rewraps DDP,
  rebuilds the optimizer and LR scheduler (the schedule continues where it was; optimizer
  moments start fresh) and makes the checkpoint and early-stopping callbacks forget their best:
  "best" is chosen among checkpoints of the new structure, so `trainer.test(ckpt_path=best)`
  tests the pruned network. After the last step the pruned network is measured (params, MACs,
  size, latency) before any later compression rewrites it. On a resume Lightning replays the
  checkpoint's steps after `setup` built the pruner, so the first step due rebuilds it on the
  pruned network and continues torch-pruning's schedule from the saved progress.
- `on_train_end`: the dense network at its best epoch vs the pruned one at its best epoch
  (validation metrics, params, MACs, size, CPU latency) go into
  `pl_module.compression_report["pruning"]` (hence metrics.json) and to the loggers.

What a checkpoint holds: each step as a structure entry ``{"kind": "prune", "history": ...}``,
torch-pruning's pruning history (root layer name, output or input channels, channel indices:
plain lists), and the head count of every attention module. `restore_pruning` replays it on
a freshly built network before the weights load, so pruned checkpoints load through
`load_from_checkpoint`, `eval.py` and `ckpt_path=` resume while the file opens with
``torch.load(weights_only=True)``. The number of steps done is the number of such entries on
the module, so a resume neither repeats nor skips a step; the
callback's own state (the pruner's progress, the dense and pruned measurements, Taylor
gradients awaiting a step) is in `state_dict`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch_pruning as tp
from torch import nn
from typing_extensions import override

from slimlab.compression import measure
from slimlab.compression.callback import CompressionCallback, Stage, StructureWindow
from slimlab.compression.heads import (
    find_attention,
    head_counts,
    heads_from_pruner,
    set_heads,
    torch_pruning_heads,
)
from slimlab.compression.schedules import (
    prune_fraction,
    prune_heads_left,
    prune_last_step_epoch,
    prune_step_position,
)
from slimlab.compression.structure_change import after_structure_change
from slimlab.models.base import SlimModule, call_net, logits_of
from slimlab.utils.compat import (
    dense_heads,
    pruner_progress,
    resume_pruner,
    set_next_head_removals,
)
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.logging import get_logger

log = get_logger(__name__)

KEY = "compression.prune"  # config key named in error messages
IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "random")
RANKINGS = ("local", "global")
TARGETS = ("channels", "params", "macs")
# a params / MACs target: the pruner takes FINE_STEPS steps of 1% of the channels each, and a
# pruning step stops at the first that reaches its goal (docs/pruning.md: why not bisection)
FINE_STEPS = 100
REACH_STEPS = 20  # coarser steps of the dry run that checks a target is reachable
LOSS_TERM = "prune_sparsity"
PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)
BATCH_NORMS = nn.modules.batchnorm._BatchNorm


# -- torch-pruning, as plain functions ----------------------------------------------------------
@contextlib.contextmanager
def autograd_on() -> Iterator[None]:
    """torch-pruning traces with autograd: leave any no_grad / inference_mode for the block."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def layer_widths(net: nn.Module) -> dict[str, int]:
    """Output channels (Conv) and output features (Linear) of every layer, by name."""
    widths = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            widths[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            widths[name] = int(m.out_features)
    return widths


def find_head(net: nn.Module, example_input: Any) -> str | None:
    """Name of the last Conv/Linear layer a forward pass runs: the classifier head."""
    names = {m: name for name, m in net.named_modules()}
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda m, i, o: order.append(names[m]))
        for m in net.modules()
        if isinstance(m, PRUNABLE)
    ]
    try:
        with measure.measuring(net):
            call_net(net, measure.move_to(example_input, measure.device_of(net)))
    finally:
        for handle in handles:
            handle.remove()
    return order[-1] if order else None


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
    example_input: Any,
    importance: str = "l1",
    ranking: str = "local",
    round_to: int | None = None,
    ignored_layers: Sequence[str] = (),
    amount: float = 1.0,
    steps: int = FINE_STEPS,
    head_amount: float = 0.0,
) -> tp.pruner.BasePruner:
    """A torch-pruning pruner over `net` that removes `amount` of the channels in `steps` equal
    steps (torch-pruning's linear schedule); the named layers keep their output channels.

    Attention modules (`slimlab.compression.heads`) lose whole heads, `head_amount` of them,
    when `head_amount > 0`; otherwise every head keeps its count and loses the same dims."""
    modules = dict(net.named_modules())
    heads = torch_pruning_heads(net)
    was_training = net.training
    try:
        with autograd_on():
            pruner = tp.pruner.BasePruner(
                net,
                measure.move_to(example_input, measure.device_of(net)),
                importance=make_importance(importance),
                global_pruning=ranking == "global",
                pruning_ratio=amount,
                iterative_steps=steps,
                ignored_layers=[modules[name] for name in ignored_layers],
                round_to=round_to,
                output_transform=logits_of,  # trace the logits of any output the contract allows
                num_heads=heads,
                prune_num_heads=bool(heads) and head_amount > 0,
                prune_head_dims=head_amount == 0,
                head_pruning_ratio=head_amount,
            )
    finally:
        net.train(was_training)  # tracing leaves the network in eval mode
    return pruner


def residual_writers(net: nn.Module, example_input: Any) -> list[str]:
    """Names of the Conv/Linear layers whose outputs make a transformer's token width (the
    residual stream its attention modules read); [] for a network without attention."""
    attention = find_attention(net)
    if not attention:
        return []
    qkv = next(iter(torch_pruning_heads(net)))
    graph = dependency_graph(net, example_input)
    names = {m: name for name, m in net.named_modules()}
    group = graph.get_pruning_group(qkv, tp.prune_linear_in_channels, idxs=[0])
    return sorted(
        names[dep.target.module]
        for dep, _ in group
        if isinstance(dep.target.module, PRUNABLE) and graph.is_out_channel_pruning_fn(dep.handler)
    )


def prune_step(pruner: tp.pruner.BasePruner) -> list[list]:
    """Take the pruner's next step; return what it removed as plain-data pruning history."""
    start = len(pruner.DG.pruning_history())
    if pruner.num_heads and pruner.prune_num_heads and not pruner.global_pruning:
        # torch-pruning's local steps compound: tell it how many heads each module loses, so
        # that it keeps what the linear schedule gives for its dense head count
        k, steps, dense = pruner.current_step, pruner.iterative_steps, dense_heads(pruner)
        removals = {
            layer: heads - prune_heads_left(k, steps, pruner.head_pruning_ratio, dense[layer])
            for layer, heads in pruner.num_heads.items()
        }
        set_next_head_removals(pruner, removals)
    with autograd_on():
        pruner.step()
    if pruner.num_heads:  # the attention modules compute with the heads they have left
        heads = heads_from_pruner(pruner.model, pruner.num_heads)
        emptied = sorted(name for name, count in heads.items() if count < 1)
        if emptied:  # global ranking picks heads across modules, and may take all of one
            raise ConfigError(
                f"{KEY}: ranking=global removed every attention head of {emptied}, which "
                "then cannot run: give compression.prune.ranking=local (each module keeps "
                "its share of heads) or a smaller compression.prune.head_amount"
            )
        set_heads(pruner.model, heads)
    return [
        [str(name), bool(out), [int(i) for i in idxs]]
        for name, out, idxs in pruner.DG.pruning_history()[start:]
    ]


def _count(net: nn.Module, example_input: Any, metric: str) -> int:
    if metric == "params":
        return measure.count_params(net)
    return measure.count_macs(net, example_input)


def prune_until(
    pruner: tp.pruner.BasePruner, net: nn.Module, example_input: Any, metric: str, goal: float
) -> list[list]:
    """Step the pruner until `metric` ("params" or "macs", as `measure` counts them) of `net` is
    at most `goal`, or its schedule ends; return the history of the steps taken."""
    history: list[list] = []
    while pruner.current_step < pruner.iterative_steps:
        if _count(net, example_input, metric) <= goal:
            break
        history += prune_step(pruner)
    return history


def reachable_fraction(
    net: nn.Module,
    example_input: Any,
    metric: str,
    importance: str,
    ranking: str,
    round_to: int | None,
    ignored_layers: Sequence[str],
) -> float:
    """About the largest fraction of `metric` that removing channels takes from `net`: a dry
    run of `REACH_STEPS` steps to all channels on a copy (the real schedule's finer steps may
    take slightly more)."""
    copied = copy.deepcopy(net)
    dense = _count(copied, example_input, metric)
    pruner = build_pruner(
        copied, example_input, importance, ranking, round_to, ignored_layers, 1.0, REACH_STEPS
    )
    least = dense
    while pruner.current_step < pruner.iterative_steps:
        prune_step(pruner)
        least = min(least, _count(copied, example_input, metric))
    return 1.0 - least / dense


def dependency_graph(net: nn.Module, example_input: Any) -> tp.DependencyGraph:
    """torch-pruning's graph of the coupled layers of `net`, traced on `example_input`."""
    was_training = net.training
    try:
        with autograd_on():
            return tp.DependencyGraph().build_dependency(
                net,
                example_inputs=measure.move_to(example_input, measure.device_of(net)),
                output_transform=logits_of,
            )
    finally:
        net.train(was_training)


def apply_history(net: nn.Module, example_input: Any, history: list) -> None:
    """Remove the channels torch-pruning's pruning `history` lists from `net`, in order."""
    graph = dependency_graph(net, example_input)
    graph.load_pruning_history([[name, bool(out), list(idxs)] for name, out, idxs in history])


def restore_pruning(module: SlimModule, entry: dict) -> None:
    """Replay a "prune" structure entry on a module's network (before its weights load)."""
    apply_history(module.net, module.example_input_array, entry["history"])
    set_heads(module.net, entry.get("heads", {}))
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


# -- the callback ---------------------------------------------------------------------------------
class StructuredPruning(CompressionCallback):
    """Remove whole channels during training with torch-pruning, then fine-tune.

    Args:
        amount: the fraction to remove, in (0, 1): of the channels (`target="channels"`), or of
            the network's parameters / MACs (`target="params"` / `"macs"`).
        target: what `amount` is a fraction of. For params and MACs each step prunes in small
            steps until the count reaches its goal.
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
        head_amount: transformers: the fraction of every attention module's heads to remove
            as whole heads, in [0, 1); 0 keeps the head count and narrows every head alike.
        keep_token_width: transformers: keep the token width (the residual stream every block
            reads and writes), so `amount` narrows only the MLPs (and head dims); false
            narrows it too.
        report: measure dense vs pruned into `compression_report`: true, false, or a mapping
            with `enabled`, `latency` (CPU latency at batch 1 and 64) and `repeats`.
    """

    key = KEY
    stage = Stage.PRUNE

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
        head_amount: float = 0.0,
        keep_token_width: bool = True,
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
        require(
            isinstance(head_amount, int | float) and 0.0 <= float(head_amount) < 1.0,
            f"{KEY}.head_amount={head_amount} is out of range: give a fraction of the attention "
            "heads in [0, 1) (0: keep every head)",
        )
        require(
            float(head_amount) == 0 or target == "channels",
            f"{KEY}.head_amount={head_amount} needs target=channels: with target={target} the "
            "pruner stops at a parameter or MAC goal, which sets no share of heads; give "
            f"{KEY}.target=channels, or head_amount=0 (heads keep their count)",
        )
        self.head_amount = float(head_amount)
        self.keep_token_width = bool(keep_token_width)
        self._token_width_layers: list[str] = []
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
        self.report = measure.report_settings(report, KEY)
        self._head: str | None = None
        self._pruner: tp.pruner.BasePruner | None = None  # rank 0's, built in setup
        self._pruner_steps = 0  # pruning steps the network had as the pruner last saw it
        # state (see state_dict): the pruner's progress, the dense network's measurements and
        # best validation, the pruned network's, the channel ratio after each step, Taylor
        # gradients awaiting a step
        self._progress: dict[str, Any] | None = None
        self._dense_count: int | None = None  # dense params / MACs (a params / MACs target)
        self._dense: dict[str, Any] | None = None
        self._dense_best = measure.BestValidation()
        self._pruned: dict[str, Any] | None = None
        self._pruned_best = measure.BestValidation()
        self._pruned_log_length: int | None = None  # structure-log length after the last step
        self._ratios: list[float] = []
        self._grads: dict[str, torch.Tensor] = {}

    @override
    def structure_window(self) -> StructureWindow:
        last = prune_last_step_epoch(self.steps, self.start_epoch, self.end_epoch)
        return StructureWindow(
            self.start_epoch, last, f"{KEY}.start_epoch", "the last pruning step"
        )

    # -- checks before training --------------------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        module = self.check_setup(trainer, pl_module)
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
        done = steps_done(module)
        if done >= self.steps:
            return
        if self._pruner is not None and self._pruner.model is module.net:
            return  # a second fit of the same module: the pruner goes on
        require(
            done == 0 or self._progress is not None,
            f"model.net has {done} of the {self.steps} pruning steps but no pruning state: "
            "resume the run with ckpt_path=<its last.ckpt> so the schedule continues",
        )
        self._pruner = self._check_network(module)
        self._pruner_steps = done

    def _check_network(self, pl_module: SlimModule) -> tp.pruner.BasePruner:
        """Check the network can be pruned as asked; return the run's pruner, built on it."""
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
        require(
            self.head_amount == 0 or bool(find_attention(net)),
            f"{KEY}.head_amount={self.head_amount} needs attention modules, and model.net "
            f"({type(net).__name__}) has none that slimlab.compression.heads knows: give "
            "head_amount=0",
        )
        try:
            self._head = find_head(net, example)
            if self.keep_token_width:
                self._token_width_layers = residual_writers(net, example)
            pruner = self._build(net, example, self.importance)
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
        if self.target != "channels":
            # nothing is trained yet: Taylor (weight x gradient) stands in as weight magnitude
            importance = "l1" if self.importance == "taylor" else self.importance
            with autograd_on():
                most = reachable_fraction(
                    net, example, self.target, importance, self.ranking, self.round_to,
                    self._ignored(net),
                )  # fmt: skip
            require(
                self.amount <= most,
                f"{KEY}.amount={self.amount} of the {self.target} is out of reach: removing "
                f"channels can take at most {most:.3f} of them from model.net "
                f"({type(net).__name__}); give a smaller amount",
            )
        return pruner

    def _build(self, net: nn.Module, example: Any, importance: str) -> tp.pruner.BasePruner:
        if self.target == "channels":  # torch-pruning's own schedule: n steps to `amount`
            amount, steps = self.amount, self.steps
        else:  # fine steps towards all channels; each pruning step stops at its goal
            amount, steps = 1.0, FINE_STEPS
        return build_pruner(
            net, example, importance, self.ranking, self.round_to, self._ignored(net),
            amount, steps, self.head_amount,
        )  # fmt: skip

    def _ignored(self, net: nn.Module) -> list[str]:
        names = list(self.ignored_layers) + [
            name for name in self._token_width_layers if name not in self.ignored_layers
        ]
        if self._head is not None and self._head not in names:
            names.append(self._head)
        return names

    # -- the schedule -----------------------------------------------------------------------
    def _due(self, trainer: L.Trainer, pl_module: SlimModule, epoch: int, batch_idx: int) -> bool:
        k = steps_done(pl_module)
        if k >= self.steps:
            return False
        position = prune_step_position(
            k, self.steps, self.start_epoch, self.end_epoch, trainer.num_training_batches
        )
        return (epoch, batch_idx) >= position

    @override
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

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fast_dev_run:
            return
        while self._due(trainer, pl_module, trainer.current_epoch, batch_idx):
            self._prune_step(trainer, pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.check_loss_terms_used(pl_module, [LOSS_TERM])
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

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":
            return
        done = steps_done(pl_module)
        if done == 0:
            self._dense_best.update(trainer)
        elif done == self.steps and len(pl_module.structure_log) == self._pruned_log_length:
            self._pruned_best.update(trainer)  # the pruned network, not yet rewritten by others

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.remove_loss_term(LOSS_TERM)
        if steps_done(pl_module) >= self.steps:
            self._pruner = None  # holds the network; nothing is left to prune
        if self.report.enabled and steps_done(pl_module) > 0 and trainer.is_global_zero:
            self._report(trainer, pl_module)

    # -- one step ---------------------------------------------------------------------------
    def _prune_step(self, trainer: L.Trainer, pl_module: SlimModule) -> None:
        k = steps_done(pl_module)
        net, example = pl_module.net, pl_module.example_input_array
        plan: dict[str, Any] | None = None
        error: Exception | None = None
        if trainer.is_global_zero:
            try:
                if k == 0 and self.report.enabled:
                    self._dense = measure.measure_as(net, example, self.report)
                plan = self._step_pruner(pl_module, k)
            except Exception as exc:  # tell the other ranks instead of leaving them waiting
                plan, error = {"error": repr(exc)}, exc
        plan = trainer.strategy.broadcast(plan, src=0)
        if error is not None:
            raise error
        if "error" in plan:
            raise RuntimeError(f"{KEY}: step {k + 1} failed on rank 0: {plan['error']}")
        if not trainer.is_global_zero:
            apply_history(net, example, plan["history"])
            set_heads(net, plan["heads"])
        self._progress = plan["progress"]
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
                "heads": plan["heads"],
            }
        )
        pl_module.net_changed()
        after_structure_change(trainer, pl_module)
        if k + 1 == self.steps:
            pl_module.remove_loss_term(LOSS_TERM)
            self._pruned_log_length = len(pl_module.structure_log)
            if trainer.is_global_zero and self.report.enabled:
                self._pruned = measure.measure_as(net, example, self.report)
        if trainer.is_global_zero:
            self._log_step(trainer, pl_module, k + 1, widths)

    def _step_pruner(self, pl_module: SlimModule, k: int) -> dict[str, Any]:
        """Step rank 0's pruner for pruning step `k`; return the plan the other ranks replay."""
        assert self._pruner is not None, "the pruner is built in setup"
        net, example = pl_module.net, pl_module.example_input_array
        if self._pruner_steps != k:
            # a resume: setup built the pruner on the dense network, then the checkpoint's
            # steps were replayed under it (its head counts and traced graph are stale)
            self._pruner, self._pruner_steps = self._build(net, example, self.importance), k
        pruner = self._pruner
        if self._progress is not None and pruner.current_step != self._progress["step"]:
            if pruner.num_heads and self.head_amount > 0 and "dense_heads" not in self._progress:
                raise ConfigError(
                    f"{KEY}: this checkpoint was saved between head-pruning steps by an earlier "
                    "SlimLab, which did not record the dense head counts the next step needs: "
                    "resume from a checkpoint written before the first pruning step, or train "
                    "the run again"
                )
            resume_pruner(pruner, self._progress)  # a resumed run: the network is pruned already
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() + k)  # importance=random: reproducible steps
            for name, p in net.named_parameters():
                if name in self._grads:
                    p.grad = self._grads[name].to(p.device)
            if self.target == "channels":
                history = prune_step(pruner)
            else:
                if self._dense_count is None:
                    self._dense_count = _count(net, example, self.target)
                goal = (1.0 - prune_fraction(k, self.steps, self.amount)) * self._dense_count
                history = prune_until(pruner, net, example, self.target, goal)
                if _count(net, example, self.target) > goal:
                    log.warning(
                        f"{KEY}: step {k + 1} reached {_count(net, example, self.target)} "
                        f"{self.target}, short of the goal {goal:.0f}: no more channels can go"
                    )
        self._pruner_steps = k + 1
        return {
            "history": history,
            "heads": head_counts(net),
            "ratio": float(pruner.per_step_pruning_ratio[pruner.current_step]),
            "progress": pruner_progress(pruner),
        }

    def _log_step(
        self, trainer: L.Trainer, pl_module: SlimModule, step: int, widths: dict[str, int]
    ) -> None:
        example = pl_module.example_input_array
        params = measure.count_params(pl_module.net)
        macs = measure.count_macs(pl_module.net, measure.example_batch(example, 1))
        metrics = {"prune/step": float(step), "prune/params": params, "prune/macs": macs}
        metrics.update({f"prune/width/{name}": width for name, width in widths.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        log.info(
            f"Pruning step {step}/{self.steps} (epoch {trainer.current_epoch}): {params} params, "
            f"{macs} MACs; widths {widths}"
            + (f"; attention heads {heads}" if (heads := head_counts(pl_module.net)) else "")
        )

    def _report(self, trainer: L.Trainer, pl_module: SlimModule) -> None:
        """The dense network at its best epoch vs the pruned one at its best epoch."""
        pruned = self._pruned
        if pruned is None and len(pl_module.structure_log) == self._pruned_log_length:
            pruned = measure.measure_as(pl_module.net, pl_module.example_input_array, self.report)
        before = {**(self._dense or {}), **(self._dense_best.metrics or {})}
        after = {**(pruned or {}), **(self._pruned_best.metrics or {})}
        section = {
            "method": (
                f"{self.ranking} {self.importance} to {self.amount} of the {self.target} in "
                f"{self.steps} step(s), round_to={self.round_to}"
            ),
            "steps": steps_done(pl_module),
            "channel_ratios": list(self._ratios),
            "dense_best_epoch": self._dense_best.epoch,
            "pruned_best_epoch": self._pruned_best.epoch,
            **measure.compare(before, after),
            "widths": [e for e in pl_module.structure_log if e["kind"] == "prune"][-1]["widths"],
        }
        if "val_acc" in before and "val_acc" in after:
            section["val_acc_change"] = after["val_acc"] - before["val_acc"]
        measure.add_section(pl_module, "pruning", section)
        change = {k: v for k, v in section.items() if k.endswith("_ratio") or "speedup" in k}
        log.info(f"Pruning report: {change}")

    # -- state --------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "progress": self._progress,
            "dense_count": self._dense_count,
            "dense": self._dense,
            "dense_best": self._dense_best.state_dict(),
            "pruned": self._pruned,
            "pruned_best": self._pruned_best.state_dict(),
            "pruned_log_length": self._pruned_log_length,
            "ratios": list(self._ratios),
        }
        if self._grads:
            state["taylor_grads"] = dict(self._grads)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._progress = state_dict.get("progress")
        self._dense_count = state_dict.get("dense_count")
        self._dense = state_dict.get("dense")
        self._dense_best.load_state_dict(state_dict.get("dense_best"))
        self._pruned = state_dict.get("pruned")
        self._pruned_best.load_state_dict(state_dict.get("pruned_best"))
        self._pruned_log_length = state_dict.get("pruned_log_length")
        self._ratios = list(state_dict.get("ratios", []))
        self._grads = dict(state_dict.get("taylor_grads", {}))
