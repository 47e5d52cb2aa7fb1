"""Report each validation to the Optuna trial of a sweep job, and stop the trial if pruned."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from hydra_plugins.slimlab_optuna_sweeper.trials import current_trial
from slimlab.utils.errors import ConfigError
from slimlab.utils.logging import get_logger

log = get_logger(__name__)


class OptunaPruning(Callback):
    """Lets the sweeper's Optuna pruner stop unpromising trials early.

    After every validation (not the sanity check) rank 0 reports `monitor` to the trial at
    the current epoch and asks `trial.should_prune()`; the answer is broadcast to every rank.
    A pruned trial stops training cleanly on every rank (`trainer.should_stop`); then
    `end_if_pruned`, called by train.py after `fit`, raises `optuna.TrialPruned` on rank 0,
    which the sweeper records as PRUNED, and lets the other ranks end quietly (a DDP worker
    that exits with an error makes Lightning kill the whole process tree, sweep included).
    `monitor` must move in the study's direction (val/acc for "maximize").

    Inert outside a `slimlab_optuna` sweep, with a launcher that runs jobs in other processes
    (the trial object lives in the sweeper's process), and for multi-objective studies
    (Optuna does not prune those).
    """

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor = monitor
        self.trial: Any = None
        self.pruned: str | None = None  # why this fit was stopped, when the pruner stopped it

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.pruned = None
        if not trainer.is_global_zero:
            return
        self.trial = current_trial()
        if self.trial is not None and len(self.trial.study.directions) > 1:
            log.warning("Multi-objective study: Optuna cannot prune it, no values reported")
            self.trial = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:  # every rank: none waits alone
            raise ConfigError(
                f"callbacks.optuna_pruning.monitor={self.monitor} was not logged: logged "
                f"metrics are {sorted(trainer.callback_metrics)}"
            )
        prune, value = False, float(trainer.callback_metrics[self.monitor])
        if self.trial is not None:
            self.trial.report(value, step=trainer.current_epoch)
            prune = bool(self.trial.should_prune())
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            epoch = trainer.current_epoch
            self.pruned = f"pruned at epoch {epoch} with {self.monitor}={value:.4g}"
            log.info("Optuna trial %s: stopping", self.pruned)
            trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trial = None


def end_if_pruned(callbacks: list[Callback], trainer: L.Trainer) -> bool:
    """After `fit`: did a pruner stop this job? Rank 0 raises `optuna.TrialPruned` for the
    sweeper; the other ranks get True and end the job without testing. False if not pruned."""
    pruned = next((c.pruned for c in callbacks if isinstance(c, OptunaPruning) and c.pruned), None)
    if pruned is None:
        return False
    if trainer.is_global_zero:
        import optuna

        raise optuna.TrialPruned(pruned)
    return True
