"""Hyper-parameters are saved as plain data, or refused before training with object and key."""

from __future__ import annotations

import functools

import pytest
import torch
from omegaconf import OmegaConf

from slimlab.callbacks.plain_hparams import PlainHyperparameters, check_hparams
from slimlab.utils.errors import ConfigError
from slimlab.utils.plain import is_plain


def test_omegaconf_values_and_built_objects_become_plain_in_the_checkpoint() -> None:
    net_cfg = {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1}
    callback = PlainHyperparameters({"model": {"net": net_cfg}, "data": {}})
    checkpoint = {
        "hyper_parameters": {
            "net": torch.nn.Linear(2, 1),
            "shape": OmegaConf.create([1, 8, 8]),
            "nested": {"sizes": OmegaConf.create({"a": [1, 2]})},
        },
        "datamodule_hyper_parameters": {"split": OmegaConf.create([5, 3, 2])},
    }
    callback.on_save_checkpoint(None, None, checkpoint)
    assert checkpoint["hyper_parameters"] == {
        "net": net_cfg,
        "shape": [1, 8, 8],
        "nested": {"sizes": {"a": [1, 2]}},
    }
    assert checkpoint["datamodule_hyper_parameters"] == {"split": [5, 3, 2]}
    assert is_plain(checkpoint["hyper_parameters"])


def test_a_value_without_config_is_refused_naming_object_and_key() -> None:
    class Module(torch.nn.Module):
        hparams = {"optimizer": functools.partial(torch.optim.SGD, lr=0.1)}

    with pytest.raises(ConfigError, match=r"^model hyper-parameter 'optimizer' holds a functools"):
        check_hparams(Module(), None, {"model": {}})
