"""Each private API that slimlab.utils.compat touches is still where it expects it."""

from __future__ import annotations

from slimlab.utils import compat
from slimlab.utils.ddp import hydra_job_command


def test_lightning_hydra_subprocess_command_is_replaced() -> None:
    from lightning.pytorch.strategies.launchers import subprocess_script

    original = subprocess_script._hydra_subprocess_cmd
    try:
        compat.set_lightning_hydra_subprocess_command(hydra_job_command)
        assert subprocess_script._hydra_subprocess_cmd is hydra_job_command
    finally:
        subprocess_script._hydra_subprocess_cmd = original
