"""Finding and checking checkpoint paths given on the command line."""

from __future__ import annotations

from pathlib import Path

from slimlab.utils.errors import ConfigError


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


def resolve_checkpoint(
    ckpt_path: str | None, log_dir: str, task_name: str, name: str
) -> str | None:
    """Turn `ckpt_path` (None, "latest" or a path) into an existing file path, or fail clearly."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "latest":
        return str(find_latest_checkpoint(log_dir, task_name, name))
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path} does not exist or is not a file: give the path of a .ckpt "
            f"written by train.py (e.g. logs/.../checkpoints/last.ckpt) or ckpt_path=latest"
        )
    return str(path.resolve())


def find_best_checkpoint(log_dir: str | Path, task_name: str, name: str) -> Path:
    """The `best_checkpoint` (from metrics.json) of experiment `name`'s newest finished run."""
    import json

    root = Path(log_dir) / task_name / name
    runs = sorted(root.glob("**/metrics.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for metrics in runs:
        try:
            best = json.loads(metrics.read_text()).get("best_checkpoint")
        except ValueError:
            continue
        if best and Path(best).is_file():
            return Path(best)
    raise ConfigError(
        f"ckpt_path=best found no finished run with a best checkpoint under {root}: run "
        f"`python train.py` for experiment name={name!r} first, or give ckpt_path=<a .ckpt file>"
    )
