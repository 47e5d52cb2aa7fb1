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
