"""Keep every checkpoint's hyper-parameters plain data, so it opens with `weights_only=True`.

Lightning writes a module's and a DataModule's `save_hyperparameters()` values into each
checkpoint, and reads the best checkpoint back with `torch.load(weights_only=True)` for the
final test (so do eval.py and `load_module`). A user's module may hold values that do not
load that way: OmegaConf containers (Hydra passes them for lists and mappings), or, written
in lightning-hydra-template's style, the objects Hydra built from config (an `nn.Module`
net, optimizer and scheduler partials). Unchecked, that failed after the whole training run.

What happens when:

- `check_hparams` (called by the train entry right after building, and again in `setup`):
  every value must be plain, an OmegaConf container, or an object built from a `_target_`
  config of this run (the run config's `model.<key>` / `data.<key>`). Anything else stops
  the run before training, naming the object and the key.
- `on_save_checkpoint`: the checkpoint's `hyper_parameters` and
  `datamodule_hyper_parameters` are replaced by plain copies: OmegaConf containers become
  dicts and lists, a built object becomes the `_target_` config that built it. The module
  and DataModule keep what they hold.

Lightning calls callbacks' `on_save_checkpoint` for full checkpoints only: with
`ModelCheckpoint(save_weights_only=True)` the module must hold plain hyper-parameters itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from slimlab.utils.errors import ConfigError
from slimlab.utils.plain import is_plain, to_plain

# checkpoint key -> (the object's name in messages, its config group)
_KEYS = {"hyper_parameters": "model", "datamodule_hyper_parameters": "data"}


def plain_hparams(
    hparams: Mapping[str, Any], source: Mapping[str, Any] | None, owner: str
) -> dict[str, Any]:
    """A plain copy of `hparams`; built objects are replaced by their config in `source`."""
    plain: dict[str, Any] = {}
    for key, value in hparams.items():
        converted = to_plain(value)
        if is_plain(converted):
            plain[key] = converted
            continue
        config = (source or {}).get(key)
        if isinstance(config, Mapping) and "_target_" in config and is_plain(config):
            plain[key] = dict(config)
            continue
        raise ConfigError(
            f"{owner} hyper-parameter {key!r} holds a {type(value).__module__}."
            f"{type(value).__qualname__}, which a checkpoint cannot store as plain data (so it "
            f"would not load with weights_only=True): pass plain values, build it from a "
            f"`{owner}.{key}` config with _target_, or leave it out with "
            f"save_hyperparameters(ignore=[{key!r}])"
        )
    return plain


def check_hparams(
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    run_config: Mapping[str, Any] | None,
) -> None:
    """Raise ConfigError now if a module or DataModule hyper-parameter could not be saved."""
    run_config = run_config or {}
    for owner, obj in (("model", model), ("data", datamodule)):
        if obj is not None and obj.hparams:
            plain_hparams(obj.hparams, run_config.get(owner), owner)


class PlainHyperparameters(Callback):
    """Checks hyper-parameters at setup and saves them as plain data in every checkpoint.

    `run_config` is the run's resolved config (plain): its `model` and `data` nodes are the
    `_target_` configs that built the module's and DataModule's arguments.
    """

    def __init__(self, run_config: Mapping[str, Any] | None = None) -> None:
        self.run_config = dict(run_config or {})

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_hparams(pl_module, trainer.datamodule, self.run_config)

    @override
    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        for key, owner in _KEYS.items():
            if checkpoint.get(key):
                checkpoint[key] = plain_hparams(checkpoint[key], self.run_config.get(owner), owner)
                checkpoint.pop(key.replace("hyper_parameters", "hparams_type"), None)
