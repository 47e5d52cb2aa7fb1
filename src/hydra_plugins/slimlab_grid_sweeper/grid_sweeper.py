"""A grid sweep (`python train.py -m a=1,2 b=x,y`) that survives failed jobs.

Hydra's basic sweeper stops at the first failed job, and a job that calls `sys.exit` (SlimLab's
exit code 2 on bad input) ends the whole sweep. This one runs the same jobs in the same order
(the cartesian product of the sweep overrides, `hydra.sweeper.params` first), and:

- each job writes `job_status.json` in its folder (slimlab.utils.sweeps): COMPLETED with
  its returned value, or FAILED with the error;
- a failed job is logged and the next one runs; a launcher that loses jobs (e.g. submitit when
  SLURM kills one) is logged too, and its jobs' status files say which ones finished;
- after the last job, if any failed, the command exits 1 with one line per failed job.

Hydra imports every module under `hydra_plugins` whenever any Hydra app starts, so this module
imports only Hydra and OmegaConf at the top; slimlab is imported where needed.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

# The sweeper runs only in the launching process: a plain logger will do.
log = logging.getLogger(__name__)


def grid(arguments: Sequence[str], config_loader: Any = None) -> list[list[str]]:
    """The jobs of a grid sweep: one override list per point of the cartesian product.

    A later override of a key replaces an earlier one in place, as in Hydra's basic sweeper.
    """
    parser = OverridesParser.create(config_loader=config_loader)
    axes: dict[str, list[str]] = {}
    for override in parser.parse_overrides(list(arguments)):
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(
                f"{key}: a grid sweep needs a list of values (a,b,c, range(...), choice(...)); "
                "interval(...) needs a search sweeper such as hparams_search=digits_optuna"
            )
    return [list(point) for point in itertools.product(*axes.values())]


class GridSweeper(Sweeper):
    """Runs every point of the grid, `max_batch_size` jobs per launcher call."""

    def __init__(
        self, max_batch_size: int | None = None, params: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        if max_batch_size is not None and (
            not isinstance(max_batch_size, int) or max_batch_size < 1
        ):
            from slimlab.utils.errors import ConfigError

            raise ConfigError(
                f"hydra.sweeper.max_batch_size={max_batch_size!r} is out of range: give the "
                "number of jobs per launcher call, an integer >= 1, or null for all at once"
            )
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep Hydra's context and config; build the launcher around the recording task."""
        from slimlab.utils.sweeps import recording_launcher

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = recording_launcher(hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Run every job of the grid; raise SweepFailed at the end if any failed."""
        from slimlab.utils.sweeps import Failure, job_folders, raise_if_failed

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        loader = self.hydra_context.config_loader
        params = [f"{key}={value}" for key, value in self.params.items()]
        jobs = grid([*params, *arguments], loader)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        shared = set.intersection(*(set(job) for job in jobs)) if len(jobs) > 1 else set()
        size = self.max_batch_size or len(jobs)
        failures: list[Failure] = []
        returns: list[Sequence[JobReturn]] = []
        for first in range(0, len(jobs), size):
            batch = jobs[first : first + size]
            folders = job_folders(loader, self.config, batch, first)  # bad configs fail here
            try:
                results = self.launcher.launch(batch, initial_job_idx=first)
            except Exception as exc:  # the launcher lost the batch: read what its jobs wrote
                log.error(
                    "The launcher failed on jobs #%d-#%d: %r", first, first + len(batch) - 1, exc
                )
                swept = [[o for o in job if o not in shared] for job in batch]
                failures += self._lost(swept, folders, first, exc)
                continue
            returns.append(results)
            for offset, result in enumerate(results):
                swept = [o for o in batch[offset] if o not in shared]  # what names this job
                failure = self._failure(result, first + offset, swept, folders[offset])
                if failure is not None:
                    failures.append(failure)
        raise_if_failed(failures, len(jobs), sweep_dir)
        return returns

    @staticmethod
    def _failure(result: JobReturn, job: int, overrides: Sequence[str], folder: Path) -> Any:
        """The Failure of a job that failed (logged), or None."""
        from slimlab.utils.compat import hydra_job_error
        from slimlab.utils.sweeps import Failure, error_text, is_user_error

        if result.status == JobStatus.COMPLETED:
            return None
        error = hydra_job_error(result)
        text = error_text(error) if error is not None else f"status {result.status.name}"
        trace = None if error is None or is_user_error(error) else error  # bad input: no trace
        log.error("Job #%d failed (%s), going on: %s", job, folder, text, exc_info=trace)
        return Failure(job, tuple(overrides), text)

    @staticmethod
    def _lost(
        batch: Sequence[Sequence[str]], folders: Sequence[Path], first: int, exc: Exception
    ) -> list[Any]:
        """Failures of a batch whose launcher raised: every job that wrote no COMPLETED status."""
        from slimlab.utils.sweeps import COMPLETED, Failure, read_status

        failures = []
        for offset, (overrides, folder) in enumerate(zip(batch, folders)):
            status = read_status(folder) or {}
            if status.get("status") != COMPLETED:
                error = status.get("error") or f"lost by the launcher: {exc!r}"
                failures.append(Failure(first + offset, tuple(overrides), error))
        return failures
