"""Launch Lightning's DDP worker processes correctly under Hydra, single runs and sweeps alike.

Lightning's `ddp` strategy starts ranks 1..N-1 by re-running the command line. Under Hydra
it re-runs `sys.argv` with `hydra.run.dir` set to the *run* dir: inside a multirun that
re-runs the whole sweep (`-m` stays in argv) in the wrong folder. We replace that command
with one that runs exactly this job: the job's own overrides, its output folder, no sweep.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning.pytorch.strategies.launchers import subprocess_script


def hydra_job_command(local_rank: int) -> tuple[Sequence[str], str]:
    """Command and cwd that re-run the current Hydra job as DDP rank `local_rank`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += list(hydra_cfg.overrides.task)
    command += [
        f"hydra.run.dir={hydra_cfg.runtime.output_dir}",
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
        "hydra/hydra_logging=none",
        "extras.print_config=false",
    ]
    return command, get_original_cwd()


def install_hydra_ddp_launcher() -> None:
    """Make Lightning's subprocess launcher use `hydra_job_command` (idempotent)."""
    subprocess_script._hydra_subprocess_cmd = hydra_job_command
