"""OmegaConf resolvers used by configs/: unique run ids and the W&B sweep group."""

from __future__ import annotations

import os
import secrets

from omegaconf import OmegaConf

# One id per process: a run folder or sweep folder name never collides with another job's,
# even when two start in the same second on the same machine.
_RUN_ID = f"{os.getpid():x}{secrets.token_hex(2)}"


def run_id() -> str:
    """Process-unique suffix for run and sweep folder names."""
    return _RUN_ID


def sweep_group() -> str | None:
    """Name of the current multirun's sweep folder (the W&B group), or None in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return os.path.basename(os.path.normpath(hydra_cfg.sweep.dir))


def register_resolvers() -> None:
    """Register SlimLab's resolvers once (safe to call again)."""
    if not OmegaConf.has_resolver("slimlab.run_id"):
        OmegaConf.register_new_resolver("slimlab.run_id", run_id)
    if not OmegaConf.has_resolver("slimlab.sweep_group"):
        OmegaConf.register_new_resolver("slimlab.sweep_group", sweep_group)


register_resolvers()
