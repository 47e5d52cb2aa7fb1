"""ckpt_path as a file, a run folder, `best` or `latest`; what a checkpoint has left to train."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from slimlab.utils.checkpoints import nothing_left_to_train, resolve_checkpoint
from slimlab.utils.errors import ConfigError


def _run(root: Path, name: str, age: int, epochs: int = 3) -> Path:
    """A finished run folder of experiment `demo` holding best and last checkpoints."""
    folder = root / "train" / "demo" / "runs" / name
    (folder / "checkpoints").mkdir(parents=True)
    state = {"epoch": epochs - 1, "global_step": 10 * epochs}
    state["loops"] = {"fit_loop": {"epoch_progress": {"current": {"processed": epochs}}}}
    for file in ("epoch_001.ckpt", "last.ckpt"):
        torch.save(state, folder / "checkpoints" / file)
    summary = {"best_checkpoint": str(folder / "checkpoints" / "epoch_001.ckpt")}
    summary["last_checkpoint"] = str(folder / "checkpoints" / "last.ckpt")
    (folder / "metrics.json").write_text(json.dumps(summary))
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (1e9 + age, 1e9 + age))
    return folder


def test_best_latest_and_run_folders_resolve(tmp_path: Path) -> None:
    old, new = _run(tmp_path, "old", age=0), _run(tmp_path, "new", age=100)
    resolve = lambda p, pick="last": resolve_checkpoint(p, str(tmp_path), "train", "demo", pick)  # noqa: E731
    assert resolve("best") == str(new / "checkpoints" / "epoch_001.ckpt")
    assert resolve("latest") == str(new / "checkpoints" / "last.ckpt")
    assert resolve(str(old), "best") == str(old / "checkpoints" / "epoch_001.ckpt")
    assert resolve(str(old)) == str(old / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"ckpt_path=best found no finished run"):
        resolve_checkpoint("best", str(tmp_path), "train", "never_ran")
    with pytest.raises(ConfigError, match=r"is a folder without a best checkpoint"):
        resolve(str(tmp_path), "best")


def test_nothing_left_to_train_reads_the_loop_state(tmp_path: Path) -> None:
    last = str(_run(tmp_path, "a", age=0, epochs=3) / "checkpoints" / "last.ckpt")
    assert "finished 3 epochs and trainer.max_epochs=3" in nothing_left_to_train(last, 3, -1)
    assert nothing_left_to_train(last, 4, -1) is None
    assert "trainer.max_steps=30" in nothing_left_to_train(last, 10, 30)
