"""Measure what the tested model costs (latency, size, parameters, MACs) the same way in every run.

A callback of the `callbacks` group (not a compression technique: it changes nothing), kept
beside the measuring module it uses.

A compression search compares dense, pruned and int8 trials on latency and size, so each trial
must measure its final model alike. Timeline of a run with `ModelCost`:

- `trainer.test` runs on the model the run ends with: the best checkpoint, or for QAT the int8
  model converted from it, compressed or not;
- at the end of the test epoch rank 0 measures that network on the CPU: latency is the median
  of `repeats` timed forward passes of one `batch_size` batch on `threads` threads (after a
  few warm-up passes), size is the bytes of its saved state_dict; other ranks receive the
  numbers, so every rank logs the same;
- the numbers are logged as `test/latency_ms`, `test/size_mb`, `test/params` and `test/macs`:
  they reach the loggers, metrics.json's `test` section and `optimized_metric` (a sweep's
  objectives); in a `slimlab_optuna` sweep the measurement and its settings are also recorded
  with the trial (user attr `model_cost`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from slimlab.utils.errors import require
from slimlab.utils.logging import get_logger

log = get_logger(__name__)


class ModelCost(Callback):
    """Logs the tested model's CPU latency, size, parameters and MACs as `test/...` metrics."""

    def __init__(self, batch_size: int = 32, repeats: int = 30, threads: int = 1) -> None:
        settings = {"batch_size": batch_size, "repeats": repeats, "threads": threads}
        for name, value in settings.items():
            require(
                isinstance(value, int) and value >= 1,
                f"callbacks.model_cost.{name}={value!r} is out of range: give an integer >= 1",
            )
        self.batch_size = batch_size
        self.repeats = repeats
        self.threads = threads

    def measure(self, pl_module: L.LightningModule) -> dict[str, float]:
        """The cost of `pl_module.net` as it is now (see the module docstring)."""
        from slimlab.compression.measure import measure

        example = getattr(pl_module, "example_input_array", None)
        require(
            example is not None,
            f"callbacks.model_cost needs the module's example_input_array (the model contract); "
            f"{type(pl_module).__name__} has none",
        )
        cost = measure(
            pl_module.net,
            example,
            batch_sizes=(self.batch_size,),
            repeats=self.repeats,
            threads=self.threads,
        )
        return {
            "latency_ms": float(cost[f"latency_ms_b{self.batch_size}"]),
            "size_mb": cost["size_bytes"] / 1e6,
            "params": float(cost["params"]),
            "macs": float(cost["macs"]),
        }

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cost: Any = self.measure(pl_module) if trainer.is_global_zero else None
        if trainer.world_size > 1:
            cost = trainer.strategy.broadcast(cost, src=0)
        for key, value in cost.items():
            pl_module.log(f"test/{key}", value, sync_dist=False)
        setup = {"batch_size": self.batch_size, "repeats": self.repeats, "threads": self.threads}
        log.info("Tested model cost %s (CPU, median of repeats; %s)", cost, setup)
        if trainer.is_global_zero:
            self._record_with_trial({**cost, **setup, "device": "cpu"})

    @staticmethod
    def _record_with_trial(record: dict[str, Any]) -> None:
        """Record the measurement with this job's Optuna trial, when a sweep runs it here."""
        from hydra_plugins.slimlab_optuna_sweeper.trials import current_trial

        trial = current_trial()
        if trial is not None:
            trial.set_user_attr("model_cost", record)
