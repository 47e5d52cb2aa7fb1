"""Open a SlimLab checkpoint for inference, with one clear message for each way it can be wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from slimlab.models.base import SlimModule, load_module
from slimlab.utils.errors import ConfigError


def open_checkpoint(path: str | Path, model_class: str | None = None) -> SlimModule:
    """The module a SlimLab checkpoint holds, on the CPU in eval mode, in its own structure."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={path} does not exist or is not a file: give a .ckpt written by train.py"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, pickled code (refused)
        raise ConfigError(
            f"ckpt_path={path} could not be read as a checkpoint ({type(exc).__name__}): the "
            "file is corrupt or not a .ckpt written by train.py"
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(
            f"ckpt_path={path} is not a Lightning checkpoint (no state_dict): give a .ckpt "
            "written by train.py"
        )
    if not (checkpoint.get("slimlab") or {}).get("run_config") and model_class is None:
        raise ConfigError(
            f"ckpt_path={path} is not a SlimLab checkpoint (it stores no run config): give a "
            ".ckpt written by SlimLab's train.py, or model_class=<its LightningModule>"
        )
    module = load_module(str(path), model_class)
    return module.cpu().eval()


def datamodule_of(module: SlimModule, data_cfg: dict[str, Any] | None = None) -> Any:
    """The data module the checkpoint was trained on (or `data_cfg`), never downloading."""
    cfg = data_cfg if data_cfg is not None else (module.run_config or {}).get("data")
    if cfg is None:
        raise ConfigError(
            "the checkpoint stores no data config: give data=<option>, e.g. data=digits"
        )
    cfg = dict(cfg)
    if "download" in cfg:
        cfg["download"] = False  # inference never fetches a data set
    return instantiate(cfg)
