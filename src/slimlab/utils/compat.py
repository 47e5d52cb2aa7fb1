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


def pruner_progress(pruner: Any) -> dict[str, Any]:
    """What a torch-pruning pruner needs to continue its schedule in a new process: its step
    and the initial channel count of each ranking scope (filled by its first step)."""
    _require_attributes(pruner, ("current_step", "_scope_initial_channels"), "BasePruner")
    return {
        "step": int(pruner.current_step),
        "scope_channels": {str(k): int(v) for k, v in pruner._scope_initial_channels.items()},
    }


def resume_pruner(pruner: Any, progress: dict[str, Any]) -> None:
    """Continue a freshly built pruner where `pruner_progress` left it (after a resume the
    network is already pruned, so its initial widths must come from the saved progress)."""
    _require_attributes(pruner, ("current_step", "_scope_initial_channels"), "BasePruner")
    pruner.current_step = int(progress["step"])
    pruner._scope_initial_channels.update(progress["scope_channels"])


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
