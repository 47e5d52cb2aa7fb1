"""The plumbing every entry shares (train, eval, export, serve): one place owns a run's cleanup.

What happens when, for `python train.py ...` (eval, export and serve run the same way):

1. `run_entry(main)`, called by the root script, runs the `@hydra.main` function. Hydra
   composes the config; a composition error (an unknown group option, a misspelt key, an
   override that does not parse) is reported by `run_entry` as one line (step 5).
2. Hydra makes the run folder and calls the entry's task, which `task_wrapper` wraps:
   known third-party noise is silenced (`slimlab.utils.noise`), then the task runs.
3. The task checks its config and builds what it needs (constructors check their own
   arguments; `slimlab.utils.instantiate.build` names the config key a library's complaint
   came from), and only then calls `apply_extras`: the config tree is printed for a
   config that holds, not above an error.
4. Whatever happens, `task_wrapper` finishes the loggers (the W&B run of this job). On bad
   input it also removes the run folder, if the job wrote nothing into it beyond Hydra's
   own files (a folder holding anything written earlier is never touched). It re-raises.
5. `run_entry` prints bad input as `Error: <message>` (from rank 0 only) and exits with
   code 2; a Hydra error meant to be shown compact (a sweep whose jobs failed) is printed
   alone with exit code 1, as Hydra itself does; any other error keeps its traceback.
   `HYDRA_FULL_ERROR=1` keeps every traceback.

`run_config` and `write_summary` give every entry the same resolved config (stored in
checkpoints, logged) and the same `metrics.json` layout.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from slimlab.utils.errors import describe_error, is_rank_zero, report_and_exit
from slimlab.utils.logging import get_logger
from slimlab.utils.noise import quiet_known_noise
from slimlab.utils.rich_utils import print_config_tree
from slimlab.utils.run_files import write_json_atomic

log = get_logger(__name__)

T = TypeVar("T")

# The user's own HYDRA_FULL_ERROR, kept for DDP worker processes (which inherit the "1" set below)
_USER_FULL_ERROR = "SLIMLAB_HYDRA_FULL_ERROR"
# Files Hydra writes into a job's folder before the task starts
_HYDRA_FILES = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}
# Roughly when this process started: a file older than this was written by someone else
_STARTED = time.time()


def run_entry(main: Callable[[], Any]) -> None:
    """Run a `@hydra.main` function as a command: bad input anywhere gives one line, exit 2."""
    user_full_error = os.environ.setdefault(
        _USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", "")
    )
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors here instead of printing them
    try:
        main()
    except Exception as exc:
        if user_full_error == "1":
            raise
        message = describe_error(exc)
        if message is not None:
            report_and_exit(message)
        if not isinstance(exc, CompactHydraException):
            raise
        # what Hydra does with these unless HYDRA_FULL_ERROR=1 (a sweep that ended with failed
        # jobs): the message alone, exit 1
        print(str(exc), file=sys.stderr, flush=True)
        sys.exit(1)


def task_wrapper(task: Callable[[DictConfig], T]) -> Callable[[DictConfig], T]:
    """Wrap an entry's task: noise silenced; loggers finished and an unused run folder removed."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> T:
        quiet_known_noise()
        try:
            return task(cfg)
        except Exception as exc:
            if describe_error(exc) is not None:
                remove_unused_run_dir(cfg)
            raise
        finally:
            finish_loggers()

    return wrapped


def apply_extras(cfg: DictConfig) -> None:
    """Optional start-up utilities from the `extras` group (call once the config holds)."""
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if extras.get("print_config"):
        output_dir = cfg.paths.get("output_dir")
        if output_dir:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
        print_config_tree(
            cfg, save_to=Path(output_dir) / "config_tree.log" if output_dir else None
        )


def finish_loggers() -> None:
    """End the W&B run of this job (a multirun starts the next job's own run).

    `wandb.teardown()` waits until W&B's service has written the run to disk: after
    `finish()` alone, the first run of a process was sometimes still unwritten.
    """
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
        wandb.teardown()


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved run config as plain containers (stored in checkpoints, logged)."""
    keys = [k for k in cfg if k != "hydra"]
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)
    assert isinstance(plain, dict)
    return plain


def write_summary(
    cfg: DictConfig,
    metrics: Mapping[str, Any],
    stages: Sequence[str] = ("val", "test"),
    **fields: Any,
) -> Path:
    """Write `metrics.json` into the run folder: `{stage: {name: value}}` plus `fields`."""
    summary: dict[str, Any] = {
        stage: {k.partition("/")[2]: v for k, v in metrics.items() if k.startswith(f"{stage}/")}
        for stage in stages
    }
    summary.update(fields)
    return write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", summary)


def remove_unused_run_dir(cfg: DictConfig) -> bool:
    """Remove this job's run folder if it holds only what Hydra wrote for it; True if removed.

    Kept when anything in it is not one of Hydra's job files (.hydra/*.yaml, the job log) or
    is older than this process: that was written earlier, by another run.
    """
    if not is_rank_zero():
        return False
    try:
        folder = Path(cfg.paths.output_dir)
        log_dir = Path(cfg.paths.log_dir)
    except Exception:  # no run folder to speak of (e.g. the config itself does not resolve)
        return False
    if not folder.is_dir():
        return False
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    for path in files:
        relative = path.relative_to(folder).as_posix()
        ours = relative in _HYDRA_FILES or ("/" not in relative and relative.endswith(".log"))
        if not ours or path.stat().st_mtime < _STARTED:
            return False
    _close_log_files(folder)
    shutil.rmtree(folder, ignore_errors=True)
    _remove_empty_parents(folder, stop=log_dir)
    return not folder.exists()


def _close_log_files(folder: Path) -> None:
    """Close the logging file handlers that write into `folder` (Hydra's job log)."""
    for handler in list(logging.getLogger().handlers):
        filename = getattr(handler, "baseFilename", None)
        if filename and Path(filename).resolve().is_relative_to(folder.resolve()):
            handler.close()
            logging.getLogger().removeHandler(handler)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove the now empty folders above `folder`, up to (not including) `stop`."""
    stop = stop.resolve()
    parent = folder.resolve().parent
    while parent != stop and parent.is_relative_to(stop):
        try:
            parent.rmdir()  # only succeeds on an empty folder
        except OSError:
            return
        parent = parent.parent
