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


def test_hydra_job_error_reads_what_a_failed_job_raised() -> None:
    from hydra.core.utils import JobReturn, JobStatus

    error = RuntimeError("job 3 failed")
    failed = JobReturn(status=JobStatus.FAILED)
    failed.return_value = error
    assert compat.hydra_job_error(failed) is error
    completed = JobReturn(status=JobStatus.COMPLETED)
    completed.return_value = 0.5
    assert compat.hydra_job_error(completed) is None
    # the private field still backs the public property in the installed Hydra
    assert "_return_value" in {f.name for f in JobReturn.__dataclass_fields__.values()}
