"""What a change of the network's structure means for the rest of the run.

Pruning and QAT replace parameters mid-fit. Afterwards the optimizers and schedulers must
hold the live parameters, DDP must wrap the new module, and "best checkpoint" tracking must
start over, so an older checkpoint of another shape is never tested or restored as best.
`after_structure_change` does all three, in that order, on every rank.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from slimlab.utils.compat import forget_checkpoint_best, forget_early_stopping_best


def rebuild_optimizers(trainer: L.Trainer, keep_state: bool = False) -> None:
    """New optimizers and LR schedulers for the live parameters, continuing the LR schedule.

    Param-group settings (lr, ...) and scheduler state carry over. Optimizer moments start
    fresh, unless `keep_state`: then parameters that are still the same tensors keep theirs
    (QAT keeps most; pruning replaces every tensor it touches).
    """
    old_states = [dict(opt.state) for opt in trainer.optimizers] if keep_state else []
    old_groups = [
        [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
        for opt in trainer.optimizers
    ]
    old_schedulers = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
    trainer.strategy.setup_optimizers(trainer)
    for groups, optimizer in zip(old_groups, trainer.optimizers):
        if len(groups) == len(optimizer.param_groups):
            for settings, group in zip(groups, optimizer.param_groups):
                group.update(settings)
    if len(old_schedulers) == len(trainer.lr_scheduler_configs):
        for state, cfg in zip(old_schedulers, trainer.lr_scheduler_configs):
            cfg.scheduler.load_state_dict(state)
    for state, optimizer in zip(old_states, trainer.optimizers):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p in state:
                    optimizer.state[p] = state[p]


def rewrap_ddp(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Wrap the module in a new DistributedDataParallel that knows its new parameters."""
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        strategy.model = pl_module
        strategy.configure_ddp()  # collective: checks every rank has the same shapes


def forget_best(trainer: L.Trainer) -> None:
    """Make checkpoint and early-stopping callbacks judge the new structure's epochs alone."""
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None:
            forget_checkpoint_best(cb)
        elif isinstance(cb, EarlyStopping):
            forget_early_stopping_best(cb)


def after_structure_change(
    trainer: L.Trainer, pl_module: L.LightningModule, keep_optimizer_state: bool = False
) -> None:
    """Re-wrap DDP, rebuild optimizers and schedulers, and restart best-checkpoint tracking."""
    rewrap_ddp(trainer, pl_module)
    rebuild_optimizers(trainer, keep_state=keep_optimizer_state)
    forget_best(trainer)
