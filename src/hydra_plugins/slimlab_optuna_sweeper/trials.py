"""The Optuna trial of the Hydra job running in this process: the sweeper's public API for jobs.

Timeline: the sweeper asks the study for a batch of trials and launches them inside
`launching(trials_by_job)`; a job that the launcher runs in this process (Hydra's basic
launcher, and DDP rank 0 under it) calls `current_trial()` to get its trial, e.g. to report
intermediate values to the pruner (slimlab.callbacks.OptunaPruning) or to record a user
attribute with the trial; when the launcher returns, the batch is forgotten. Jobs that run in
other processes (submitit, joblib, DDP worker ranks) get None.

Imports only Hydra: Hydra's plugin scan imports this module whenever any Hydra app starts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# The trials of the batch being launched, by Hydra job number.
_RUNNING: dict[int, Any] = {}


@contextmanager
def launching(trials_by_job: Mapping[int, Any]) -> Iterator[None]:
    """Make `trials_by_job` (Hydra job number -> optuna trial) visible to jobs run meanwhile."""
    _RUNNING.update(trials_by_job)
    try:
        yield
    finally:
        for job_num in trials_by_job:
            _RUNNING.pop(job_num, None)


def trial_of_job(job_num: int) -> Any:
    """The optuna.Trial that Hydra job `job_num` runs, if this process launched it, else None."""
    return _RUNNING.get(job_num)


def current_trial() -> Any:
    """The optuna.Trial of the Hydra job running in this process, or None outside a sweep."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    job_num = HydraConfig.get().job.get("num")
    return None if job_num is None else trial_of_job(int(job_num))
