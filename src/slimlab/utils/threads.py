"""How many CPU threads torch uses in a run: the `threads` config key, set before building.

What happens when (the train and eval entries call `apply_threads` before building the data
and the model):

1. The user's own OMP_NUM_THREADS is remembered once per process tree (in
   SLIMLAB_USER_OMP_NUM_THREADS), so the value this module exports below is never mistaken
   for the user's by a later job of a multirun or by a DDP rank.
2. `threads: <n>` (a positive integer) is used as given. `threads: auto` (the default) is the
   user's OMP_NUM_THREADS when set; otherwise the cores this process may run on (its CPU
   affinity) minus one, divided among the run's local processes (`trainer.devices` under DDP,
   LOCAL_WORLD_SIZE under torchrun), and at least 1.
3. `torch.set_num_threads(n)`, and OMP_NUM_THREADS=n in the environment: DDP ranks started
   later inherit it, and Lightning's DDP launcher (which otherwise sets cores / processes)
   leaves it alone.

Why one core is left free: torch's OpenMP threads spin while they wait for each other, so a
run with as many threads as cores collapses as soon as anything else wants a core: on the
2-core development machine, the digits run took 3.3x as long with torch's default (2 threads)
as with 1 thread while one other process was busy. Leaving a core costs little for the small
models this template trains on CPU; docs/performance.md has the measurements. On a machine
dedicated to one run, give `threads=<cores>`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from slimlab.utils.errors import require
from slimlab.utils.logging import get_logger

log = get_logger(__name__)

# The user's OMP_NUM_THREADS ("" when unset), recorded before this module first exports its own
_USER_OMP = "SLIMLAB_USER_OMP_NUM_THREADS"


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def local_processes(trainer_cfg: Mapping[str, Any] | None) -> int:
    """How many processes of this run share this machine: LOCAL_WORLD_SIZE, else
    `trainer.devices` (a count, a list or "0,1" of device ids, -1 or auto: every GPU)."""
    env = os.environ.get("LOCAL_WORLD_SIZE", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    trainer_cfg = trainer_cfg or {}
    devices = trainer_cfg.get("devices", 1)
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return max(1, len([d for d in text.split(",") if d.strip()]))
        devices = -1 if text in ("auto", "-1") else int(text) if text.isdigit() else 1
    if isinstance(devices, Sequence):
        return max(1, len(devices))
    if not isinstance(devices, int) or isinstance(devices, bool):
        return 1
    if devices == -1 and accelerator in ("gpu", "cuda", "auto"):
        return max(1, torch.cuda.device_count())
    return max(1, devices)


def _user_omp_threads() -> int | None:
    """The user's OMP_NUM_THREADS as a positive integer, or None when unset or not one."""
    os.environ.setdefault(_USER_OMP, os.environ.get("OMP_NUM_THREADS", ""))
    value = os.environ[_USER_OMP].strip()
    if not value:
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    log.warning(f"OMP_NUM_THREADS={value!r} is not a positive integer: ignored for threads=auto")
    return None


def resolve_threads(threads: Any, trainer_cfg: Mapping[str, Any] | None = None) -> int:
    """The thread count `threads` (auto or a positive integer) stands for in this process."""
    valid = threads == "auto" or (
        isinstance(threads, int) and not isinstance(threads, bool) and threads > 0
    )
    require(valid, f"threads={threads!r} is out of range: give a positive integer, or auto")
    if isinstance(threads, int):
        return threads
    user = _user_omp_threads()
    if user is not None:
        return user
    return max(1, (usable_cores() - 1) // local_processes(trainer_cfg))


def apply_threads(threads: Any, trainer_cfg: Mapping[str, Any] | None = None) -> int:
    """Set torch's CPU threads (and OMP_NUM_THREADS for later processes); return the count."""
    count = resolve_threads(threads, trainer_cfg)
    _user_omp_threads()  # remember the user's value before it is overwritten
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    os.environ["OMP_NUM_THREADS"] = str(count)
    log.debug(f"torch CPU threads: {count} (threads={threads})")
    return count
