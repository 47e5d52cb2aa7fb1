"""What every compression callback declares, and the checks made once, before training.

Each compression technique (pruning, distillation, quantization, 8/4-bit weights) is one
`CompressionCallback` subclass in its own module. It declares:

- `key`: its config key, named in every error (`compression.prune`);
- `stage`: where it sits in the one order compression runs in, prune -> distill -> quantize;
- `structure_window()`: the epochs in which it rewrites the network's structure (the first
  and the last; the last may be "at the end of fit"), or None when it rewrites nothing while
  training;
- `renames_layers` / `layer_hooks()`: whether it renames the network's layers (QAT fuses and
  renames them), and which layers it hooks by name (feature distillation).

Timeline:

- where callbacks are assembled (the train entry, right after instantiating them),
  `check_compression_order(callbacks)` checks, once, that they are listed in stage order, that
  each stage's structural work ends before a later stage's begins, and that no callback hooks
  layers a later one renames. A script that builds its own `Trainer` calls it the same way.
- in each callback's `setup`, `check_setup` refuses a strategy it does not support in one line
  naming the ones it does, then checks the module's contract (`slimlab.models.base`): a
  `SlimModule` whose `net` runs on its `example_input_array` (a tensor or a dict of tensors)
  and returns logits, naming what is missing.
- after the first training batch, `check_loss_terms_used` stops a run whose `training_step`
  never called `combine_loss`, so the callback's loss term would silently not be trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from torch import nn

from slimlab.compression.measure import describe_input, device_of, measuring, move_to
from slimlab.models.base import SlimModule, call_net, logits_of
from slimlab.utils.errors import ConfigError, require


class Stage(IntEnum):
    """The order compression runs in: prune -> distill -> quantize."""

    PRUNE = 1
    DISTILL = 2
    QUANTIZE = 3


@dataclass(frozen=True)
class StructureWindow:
    """The epochs in which a callback rewrites the network's structure."""

    first_epoch: int  # at whose start the first rewrite happens
    last_epoch: int | None  # in which the last one happens; None: at the end of fit
    first_key: str  # the config key that sets first_epoch, e.g. compression.qat.start_epoch
    last_name: str  # what the last rewrite is, e.g. "the last pruning step"


# one device, or DDP (every rank holds the whole network); not FSDP / DeepSpeed, which shard
# or wrap the network a compression callback rewrites, replaces or runs beside a teacher
SUPPORTED_STRATEGIES = (SingleDeviceStrategy, DDPStrategy)
UNSUPPORTED_STRATEGIES = (DeepSpeedStrategy,)  # a DDPStrategy subclass
SUPPORTED_TRAINERS = "trainer=default, cpu, gpu, mps (one device), ddp or ddp_sim"


class CompressionCallback(L.Callback):
    """Base of every compression callback (see the module docstring)."""

    key: ClassVar[str] = "compression"
    stage: ClassVar[Stage]
    renames_layers: ClassVar[bool] = False

    def structure_window(self) -> StructureWindow | None:
        """The epochs in which this callback rewrites the network (None: never during fit)."""
        return None

    def layer_hooks(self) -> tuple[str, Any] | None:
        """(config key, value) of the layers this callback hooks by name, or None."""
        return None

    def check_strategy(self, trainer: L.Trainer) -> None:
        """Refuse, in one line, a strategy this callback does not support."""
        strategy = trainer.strategy
        require(
            isinstance(strategy, SUPPORTED_STRATEGIES)
            and not isinstance(strategy, UNSUPPORTED_STRATEGIES),
            f"{self.key} does not support {type(strategy).__name__}: it runs with "
            f"{SUPPORTED_TRAINERS}; FSDP and DeepSpeed shard or wrap the network it compresses",
        )

    def check_setup(self, trainer: L.Trainer, pl_module: L.LightningModule) -> SlimModule:
        """The strategy and contract checks every compression callback makes in `setup`."""
        self.check_strategy(trainer)
        self._loss_terms_checked = False
        return check_contract(pl_module, self.key)

    def check_loss_terms_used(self, pl_module: L.LightningModule, names: Sequence[str]) -> None:
        """Fail when loss terms this callback added were never called by `combine_loss`.

        Call it from `on_train_batch_end`: it checks after the first batch of each fit only.
        """
        if getattr(self, "_loss_terms_checked", False):
            return
        self._loss_terms_checked = True
        assert isinstance(pl_module, SlimModule)
        unused = [
            n for n in names if n in pl_module.loss_terms and not pl_module.loss_term_calls[n]
        ]
        require(
            not unused,
            f"{self.key} added the loss term(s) {unused}, but {type(pl_module).__name__}."
            "training_step never called self.combine_loss(task_loss, batch, logits) in the "
            "first training batch, so they are not in the loss: compute the loss with "
            "`loss, parts = self.combine_loss(...)` and return it (see "
            "slimlab.models.SlimModule.combine_loss)",
        )


def _is_example(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def check_contract(pl_module: L.LightningModule, key: str) -> SlimModule:
    """Check that `pl_module` offers what compression needs, naming what is missing.

    A `SlimModule` with an `nn.Module` in `net` and an `example_input_array` (a tensor, or a
    dict of tensors) on which `net` runs and returns logits (a tensor, or a dict/object with a
    `logits` tensor). The net runs once, in eval mode, under `no_grad`.
    """
    name = type(pl_module).__name__
    require(
        isinstance(pl_module, SlimModule),
        f"{key} needs a slimlab.models.SlimModule (the compression contract: net, "
        f"example_input_array, add_loss_term / combine_loss, record_structure); {name} is not "
        "one: subclass SlimModule",
    )
    assert isinstance(pl_module, SlimModule)
    net = getattr(pl_module, "net", None)
    require(
        isinstance(net, nn.Module),
        f"{key} needs {name}.net, the nn.Module it compresses; it is "
        f"{type(net).__name__}: assign the network to self.net in __init__",
    )
    example = pl_module.example_input_array
    require(
        example is not None,
        f"{key} needs {name}.example_input_array, which is not set: in __init__ set it to one "
        "batch-1 input with the real dtypes (a tensor, or a dict of tensors such as input_ids "
        "and attention_mask); compression traces the net, counts MACs and times latency on it",
    )
    require(
        _is_example(example),
        f"{key} needs {name}.example_input_array to be a tensor or a dict of named tensors; "
        f"it is {type(example).__name__}",
    )
    try:
        with measuring(net):
            output = call_net(net, move_to(example, device_of(net)))
    except Exception as exc:
        raise ConfigError(
            f"{name}.net ({type(net).__name__}) fails on its example_input_array "
            f"{describe_input(example)} ({type(exc).__name__}: {exc}): {key} runs the net on it"
        ) from exc
    try:
        logits_of(output)  # a net must return logits, or a dict/object holding them
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return pl_module


def check_compression_order(callbacks: Sequence[Any]) -> None:
    """Check, before training, that the compression callbacks among `callbacks` compose.

    They must be listed prune -> distill -> quantize; a callback that rewrites the network
    must be done before a later stage rewrites it; a callback may not hook layers that a later
    one renames.
    """
    chain = [cb for cb in callbacks if isinstance(cb, CompressionCallback)]
    for earlier, later in zip(chain, chain[1:]):
        require(
            earlier.stage <= later.stage,
            f"{earlier.key} ({earlier.stage.name.lower()}) is listed before {later.key} "
            f"({later.stage.name.lower()}) in the callbacks: compression runs prune -> distill "
            "-> quantize; list them in that order (e.g. compression=[prune,distill,qat])",
        )
    for i, earlier in enumerate(chain):
        for later in chain[i + 1 :]:
            if earlier.stage == later.stage:
                continue
            done, starts = earlier.structure_window(), later.structure_window()
            if done is not None and starts is not None:
                last = done.last_epoch
                require(
                    last is not None and starts.first_epoch > last,
                    f"{starts.first_key}={starts.first_epoch} is not after {done.last_name} "
                    + (
                        f"(epoch {last}): give {starts.first_key} >= {last + 1}"
                        if last is not None
                        else f"(at the end of fit): {later.key} cannot follow {earlier.key}"
                    ),
                )
            hooks = earlier.layer_hooks()
            if hooks is not None and later.renames_layers:
                hook_key, value = hooks
                raise ConfigError(
                    f"{hook_key}={value} cannot be combined with {type(later).__name__} "
                    f"({later.key}): it rewrites the network (fused, renamed layers), so the "
                    f"hooked layers stop running; hook no layers ({hook_key}=[])"
                )
