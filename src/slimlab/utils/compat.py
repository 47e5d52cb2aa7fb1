"""The one place SlimLab touches other libraries' private APIs (Lightning, Hydra, torch-pruning).

Each function wraps one private attribute or internal call, and `tests/utils/test_compat.py`
pins it to the installed versions: when a library moves an internal, that test fails loudly
instead of a training run misbehaving quietly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


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
