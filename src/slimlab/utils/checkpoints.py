"""Finding and checking the checkpoint a command line names, and what it has left to train.

`ckpt_path` may be a .ckpt file, a run folder (its `metrics.json` names the best and the
last checkpoint), `latest` (the newest `last.ckpt` of experiment `name`) or `best` (the
best checkpoint of the newest finished run of experiment `name`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from slimlab.utils.errors import ConfigError

_GIVE = (
    "give the path of a .ckpt written by train.py (e.g. logs/.../checkpoints/last.ckpt), a run "
    "folder, ckpt_path=latest or ckpt_path=best"
)


def find_latest_checkpoint(log_dir: str | Path, task_name: str, name: str) -> Path:
    """Newest `last.ckpt` of experiment `name` under `log_dir/task_name/name/` (runs, sweeps)."""
    root = Path(log_dir) / task_name / name
    candidates = sorted(root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(
            f"ckpt_path=latest found no last.ckpt under {root}: run `python train.py` for "
            f"experiment name={name!r} first, or give ckpt_path=<path to a .ckpt file>"
        )
    return candidates[-1]


def find_best_checkpoint(log_dir: str | Path, task_name: str, name: str) -> Path:
    """The best checkpoint of the newest run of experiment `name` that recorded one."""
    root = Path(log_dir) / task_name / name
    summaries = sorted(root.glob("**/metrics.json"), key=lambda p: p.stat().st_mtime)
    for summary in reversed(summaries):
        best = _recorded(summary, "best_checkpoint")
        if best is not None:
            return best
    raise ConfigError(
        f"ckpt_path=best found no finished run with a best checkpoint under {root}: run "
        f"`python train.py` for experiment name={name!r} first, or {_GIVE}"
    )


def _recorded(summary: Path, key: str) -> Path | None:
    """The existing checkpoint file that `metrics.json` records under `key`, or None."""
    try:
        value = json.loads(summary.read_text()).get(key)
    except (OSError, ValueError):
        return None
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        path = summary.parent / path
    return path if path.is_file() else None


def checkpoint_in_folder(folder: Path, pick: Literal["best", "last"]) -> Path:
    """The best or last checkpoint of the run folder `folder`."""
    found = _recorded(folder / "metrics.json", f"{pick}_checkpoint")
    if found is None and pick == "best":
        found = _recorded(folder / "metrics.json", "tested_checkpoint")
    if found is None and (folder / "checkpoints" / "last.ckpt").is_file():
        found = folder / "checkpoints" / "last.ckpt"
    if found is None:
        raise ConfigError(
            f"ckpt_path={folder} is a folder without a {pick} checkpoint (no metrics.json "
            f"naming one, no checkpoints/last.ckpt): {_GIVE}"
        )
    return found


def resolve_checkpoint(
    ckpt_path: str | None,
    log_dir: str,
    task_name: str,
    name: str,
    folder_pick: Literal["best", "last"] = "last",
) -> str | None:
    """Turn `ckpt_path` (None, latest, best, a folder or a file) into a file path, or fail."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "latest":
        return str(find_latest_checkpoint(log_dir, task_name, name).resolve())
    if str(ckpt_path) == "best":
        return str(find_best_checkpoint(log_dir, task_name, name).resolve())
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        return str(checkpoint_in_folder(path, folder_pick).resolve())
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist or is not a file: {_GIVE}")
    return str(path.resolve())


def training_progress(ckpt_path: str) -> dict[str, Any]:
    """Epochs finished and global step recorded in a Lightning checkpoint."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    loops = checkpoint.get("loops") or {}
    epochs = (
        loops.get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    )
    if epochs is None:  # a checkpoint without loop state: its epoch counter, finished
        epochs = int(checkpoint.get("epoch", -1)) + 1
    return {"epochs": int(epochs), "global_step": int(checkpoint.get("global_step", 0))}


def nothing_left_to_train(ckpt_path: str, max_epochs: int | None, max_steps: int) -> str | None:
    """Why resuming `ckpt_path` would train nothing (max_epochs/max_steps reached), or None."""
    progress = training_progress(ckpt_path)
    if max_epochs is not None and max_epochs >= 0 and progress["epochs"] >= max_epochs:
        return (
            f"{ckpt_path} finished {progress['epochs']} epochs and trainer.max_epochs="
            f"{max_epochs}: give trainer.max_epochs > {progress['epochs']} to train on"
        )
    if max_steps is not None and max_steps >= 0 and progress["global_step"] >= max_steps:
        return (
            f"{ckpt_path} is at step {progress['global_step']} and trainer.max_steps="
            f"{max_steps}: give a larger trainer.max_steps to train on"
        )
    return None
