"""What SlimLab's sweepers share: each job's `job_status.json`, the end-of-sweep failure, errors.

How each job of a sweep ended is written by the job itself into `job_status.json` in its
folder. Timeline of a sweep run by SlimLab's sweepers (`slimlab_grid`, `slimlab_optuna`):

- before launching a batch, the sweeper composes each job's config (as Hydra's sweepers do, to
  fail early on a bad one) and learns each job's folder from it (`job_folders`);
- the launcher runs `recording(task)` instead of the task: when the job ends, in its own
  process (also under submitit), it writes `<job folder>/job_status.json` with the status
  (COMPLETED with the returned value, FAILED with the error, or PRUNED) and its overrides. An
  entry that calls `sys.exit` (SlimLab's exit code 2 on bad input) fails its job only,
  instead of ending the whole sweep;
- the sweeper records every failure and goes on with the other jobs; a sweeper killed
  meanwhile finds on resume, in these files, which jobs finished and what they returned;
- at the end `raise_if_failed` ends the command with exit code 1, naming the failed jobs.

scripts/sweep_report.py reads the same files for the status column of its table.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, open_dict

from slimlab.utils.errors import ConfigError, find_config_error

STATUS_FILE = "job_status.json"
COMPLETED, FAILED, PRUNED = "COMPLETED", "FAILED", "PRUNED"


class JobExited(RuntimeError):
    """A job's task called sys.exit with an error code; the sweep records it and goes on."""


class SweeperConfigError(ConfigError, CompactHydraException):
    """Bad sweeper config: Hydra prints the message alone (the sweeper runs outside the task,
    where no entry turns a ConfigError into one line) and exits 1."""


class SweepFailed(CompactHydraException):
    """Some jobs of a finished sweep failed; Hydra prints this message alone and exits 1."""


@dataclass(frozen=True)
class Failure:
    """One failed job: its number, its overrides and the error, for the end-of-sweep message."""

    job: int
    overrides: tuple[str, ...]
    error: str


def error_text(exc: BaseException) -> str:
    """One line naming the error: a ConfigError's message alone, else `Type: message`."""
    config_error = find_config_error(exc)
    if config_error is not None:
        return str(config_error)
    return f"{type(exc).__name__}: {exc}"


def is_user_error(exc: BaseException) -> bool:
    """Whether `exc` is bad input (a ConfigError, or an entry's exit on one): no traceback."""
    return isinstance(exc, JobExited) or find_config_error(exc) is not None


def _is_pruned(exc: BaseException) -> bool:
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(exc, optuna.TrialPruned)


def _plain(value: Any) -> Any:
    """`value` as JSON data (tensors and numpy numbers to Python ones), else its repr."""
    if "torch" in sys.modules:  # torch is loaded already: its converter costs nothing
        from slimlab.utils.run_files import to_jsonable

        value = to_jsonable(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def write_status(folder: str | Path, status: str, **fields: Any) -> Path:
    """Write `job_status.json` in `folder`: `status` plus `fields` (value, error, overrides...).

    Written through a temporary file and a rename, so a kill never leaves half a file.
    (Not run_files.write_json_atomic: that imports torch, which a plain Hydra app lacks.)
    """
    path = Path(folder) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}")
    data = {"status": status, **{key: _plain(value) for key, value in fields.items()}}
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_status(folder: str | Path | None) -> dict[str, Any] | None:
    """The `job_status.json` of the job in `folder`, or None if it never wrote one."""
    if folder is None:
        return None
    path = Path(folder) / STATUS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # written atomically, so only a hand-edited file gets here
        return None


def _run_and_record(task_function: Any, cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    folder = hydra_cfg.runtime.output_dir
    about = {"job": hydra_cfg.job.get("num"), "overrides": list(hydra_cfg.overrides.task)}
    try:
        value = task_function(cfg)
    except SystemExit as exc:
        if exc.code in (None, 0):
            write_status(folder, COMPLETED, value=None, **about)
            return None
        error = error_text(exc) if find_config_error(exc) else f"exited with code {exc.code}"
        write_status(folder, FAILED, error=error, **about)
        raise JobExited(error) from exc
    except Exception as exc:
        if _is_pruned(exc):
            write_status(folder, PRUNED, reason=str(exc), **about)
        else:
            trace = traceback.format_exception(exc)[-20:]
            write_status(folder, FAILED, error=error_text(exc), traceback="".join(trace), **about)
        raise
    write_status(folder, COMPLETED, value=value, **about)
    return value


def recording(task_function: Any) -> Any:
    """`task_function` wrapped to write `job_status.json` when the job ends (picklable)."""
    return functools.partial(_run_and_record, task_function)


def recording_launcher(hydra_context: Any, task_function: Any, config: DictConfig) -> Any:
    """The configured Hydra launcher, running `recording(task_function)` as each job."""
    from hydra.core.plugins import Plugins

    return Plugins.instance().instantiate_launcher(
        hydra_context=hydra_context, task_function=recording(task_function), config=config
    )


def job_folders(
    config_loader: Any, config: DictConfig, batch: Sequence[Sequence[str]], first_job: int
) -> list[Path]:
    """Compose each job of `batch` as the launcher will (errors surface here, before any job
    runs) and return the folders the jobs will write to."""
    folders = []
    for offset, overrides in enumerate(batch):
        job_cfg = config_loader.load_sweep_config(config, list(overrides))
        with open_dict(job_cfg):
            job_cfg.hydra.job.num = first_job + offset
            job_cfg.hydra.job.id = first_job + offset
        folder = Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)
        folders.append(folder.absolute())
    return folders


def raise_if_failed(failures: Sequence[Failure], total: int, sweep_dir: str | Path) -> None:
    """End a finished sweep with SweepFailed naming each failed job, if any failed."""
    if not failures:
        return
    lines = [f"{len(failures)} of {total} jobs failed (the others ran):"]
    for failure in failures:
        lines.append(f"  #{failure.job} {' '.join(failure.overrides)}: {failure.error}")
    lines.append(f"Each job's status and error: {sweep_dir}/<job>/{STATUS_FILE}")
    raise SweepFailed("\n".join(lines))
