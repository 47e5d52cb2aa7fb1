"""Compose the template's configs from Python (tests, benchmarks, notebooks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*})

# the clone's configs/ folder (SlimLab is used from a clone, installed editable)
CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"

# overrides for runs driven from Python (tests, benchmarks): no progress bar or model summary
# (NO_BARS); QUIET also drops the loggers, the config print and warnings
NO_BARS = ("callbacks.rich_progress_bar=null", "callbacks.model_summary=null")
QUIET = (*NO_BARS, "logger=none", "extras.print_config=false", "extras.ignore_warnings=true")


def compose_config(
    overrides: Sequence[str], out_dir: str | Path, config_name: str = "train"
) -> DictConfig:
    """Compose `config_name` with `overrides` as `python train.py` would, outputs under `out_dir`.

    The run folder is `out_dir/run`, logs and data roots are under `out_dir`, the rich config
    print is off; Hydra's global state is set so `${hydra:...}` interpolations resolve.
    """
    out_dir = Path(out_dir)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name=config_name, return_hydra_config=True, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root_dir = str(out_dir)
        cfg.paths.output_dir = str(out_dir / "run")
        cfg.paths.log_dir = str(out_dir / "logs")
        cfg.paths.work_dir = str(CONFIG_DIR.parent)
        cfg.hydra.runtime.output_dir = str(out_dir / "run")
        cfg.extras.print_config = False
    HydraConfig().set_config(cfg)
    return cfg
