"""Launch Lightning's DDP worker processes correctly under Hydra, single runs and sweeps alike.

Lightning's `ddp` strategy starts ranks 1..N-1 by re-running the command line. Under Hydra
it re-runs `sys.argv` with `hydra.run.dir` set to the *run* dir: inside a multirun that
re-runs the whole sweep (`-m` stays in argv) in the wrong folder. We replace that command
with one that runs exactly this job: the job's own overrides, its output folder, no sweep.

Under SLURM (`srun`) or torchrun every rank is started by that launcher, and Lightning takes
the ranks from its environment (SLURMEnvironment, TorchElasticEnvironment): SlimLab steps
aside and launches nothing (`external_launcher` says which one, with Lightning's own
detection, so both always agree). The ranks share one run folder because its name comes from
the launcher's job id (see slimlab.utils.resolvers).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from slimlab.utils.compat import set_lightning_hydra_subprocess_command
from slimlab.utils.logging import get_logger

log = get_logger(__name__)


def external_launcher() -> str | None:
    """'slurm' or 'torchrun' when that launcher started this process as one rank, else None.

    Lightning's detection, in Lightning's order: SLURM (`srun`, not an interactive `bash`
    job), then torchelastic.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect():
        return "slurm"
    if TorchElasticEnvironment.detect():
        return "torchrun"
    return None


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
        # a config may set hydra.mode=MULTIRUN (hparams_search does): the rank runs one job
        "hydra.mode=RUN",
        f"hydra.run.dir={hydra_cfg.runtime.output_dir}",
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
        "hydra/hydra_logging=none",
        "extras.print_config=false",
    ]
    return command, get_original_cwd()


def install_hydra_ddp_launcher() -> bool:
    """Make Lightning's subprocess launcher use `hydra_job_command` (idempotent); return True.

    Under SLURM or torchrun, which start every rank themselves, do nothing and return False.
    """
    launcher = external_launcher()
    if launcher is not None:
        log.info(f"Ranks come from {launcher}: Lightning's {launcher} environment sets them")
        return False
    set_lightning_hydra_subprocess_command(hydra_job_command)
    return True


# Variables Lightning's launcher writes into this process's environment for its DDP ranks.
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


@contextmanager
def distributed_job() -> Iterator[None]:
    """Run one training job so that the next job in the same process starts clean.

    A multirun runs its jobs one after another in one process: without this, the second
    DDP job would find the first job's process group and launcher environment (and would
    not start its own worker processes, or talk to the dead ones).
    """
    saved = {key: os.environ.get(key) for key in _DIST_ENV}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
