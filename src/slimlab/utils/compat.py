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
