"""OmegaConf resolvers used by configs/: run folder names, log file suffixes, the ranks an
external launcher (SLURM, torchrun) started, the W&B sweep group.

Run folders are named `<time>_<id>` with an id unique to the process, so two runs started in
the same second never share a folder. Under SLURM (`srun`) or torchrun every rank of one job
runs `train.py` itself: there the name comes from the launcher's job id, which all ranks
share (and a requeued SLURM job gets again, so Lightning finds its checkpoint in the folder).
The resolvers are cached in the config: a job that Hydra ships to another process (submitit)
keeps the folder names its sweep resolved.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime

from omegaconf import OmegaConf

# One id per process: a run folder or sweep folder name never collides with another job's,
# even when two start in the same second on the same machine.
_RUN_ID = f"{os.getpid():x}{secrets.token_hex(2)}"
_STARTED: list[str] = []  # the time of the first folder name asked for in this process


def run_id() -> str:
    """Process-unique suffix for run and sweep folder names."""
    return _RUN_ID


def _launch_id() -> str | None:
    """The job id all ranks started by SLURM or torchrun share, else None."""
    from slimlab.utils.ddp import external_launcher

    launcher = external_launcher()
    if launcher == "slurm":
        job = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
        step = os.environ.get("SLURM_STEP_ID")
        return f"slurm-{job}" + (f".{step}" if step else "")
    if launcher == "torchrun":
        run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        if run == "none":  # static rendezvous without an id: ranks of one node share the agent
            run = f"{os.getppid()}-{os.environ.get('MASTER_PORT', '')}"
        return f"torchrun-{run[:8]}"
    return None


def run_name() -> str:
    """Name of this run's (or sweep's) folder: `<time>_<id>`, or the SLURM / torchrun job id."""
    launch = _launch_id()
    if launch is not None:
        return launch
    if not _STARTED:
        _STARTED.append(datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    return f"{_STARTED[0]}_{_RUN_ID}"


def rank_suffix() -> str:
    """`_rank<N>` for rank N > 0 of a SLURM or torchrun job (its own log file), else ''."""
    from slimlab.utils.ddp import external_launcher

    launcher = external_launcher()
    if launcher is None:
        return ""
    rank = int(os.environ.get("SLURM_PROCID" if launcher == "slurm" else "RANK", "0"))
    return f"_rank{rank}" if rank > 0 else ""


def launcher_procs_per_node(default: int) -> int:
    """Processes per node that SLURM or torchrun started (trainer.devices), else `default`."""
    from slimlab.utils.ddp import external_launcher

    launcher = external_launcher()
    if launcher == "torchrun":
        return int(os.environ["LOCAL_WORLD_SIZE"])
    if launcher == "slurm":
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        if per_node.isdigit():
            return int(per_node)
        return int(os.environ["SLURM_NTASKS"]) // launcher_nodes(1)
    return default


def launcher_nodes(default: int) -> int:
    """Nodes that SLURM or torchrun runs this job on (trainer.num_nodes), else `default`."""
    from slimlab.utils.ddp import external_launcher

    launcher = external_launcher()
    if launcher == "torchrun":
        return int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    if launcher == "slurm":
        return int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", "1")))
    return default


def sweep_group() -> str | None:
    """Name of the current multirun's sweep folder (the W&B group), or None in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return os.path.basename(os.path.normpath(hydra_cfg.sweep.dir))


def register_resolvers() -> None:
    """Register SlimLab's resolvers once (safe to call again)."""
    cached = {"slimlab.run_id": run_id, "slimlab.run_name": run_name}
    for name, resolver in cached.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=True)
    plain = {
        "slimlab.rank_suffix": rank_suffix,
        "slimlab.launcher_procs_per_node": launcher_procs_per_node,
        "slimlab.launcher_nodes": launcher_nodes,
        "slimlab.sweep_group": sweep_group,
    }
    for name, resolver in plain.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()
