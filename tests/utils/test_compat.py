"""Each private API that slimlab.utils.compat touches is still where it expects it."""

from __future__ import annotations

from slimlab.utils import compat
from slimlab.utils.ddp import hydra_job_command


def test_lightning_hydra_subprocess_command_is_replaced() -> None:
    from lightning.pytorch.strategies.launchers import subprocess_script

    original = subprocess_script._hydra_subprocess_cmd
    try:
        compat.set_lightning_hydra_subprocess_command(hydra_job_command)
        assert subprocess_script._hydra_subprocess_cmd is hydra_job_command
    finally:
        subprocess_script._hydra_subprocess_cmd = original


def test_exported_batchnorm_switches_alone() -> None:
    import pytest
    import torch
    from torch import nn

    pytest.importorskip("torchao")
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    model = torch.export.export(net, (torch.randn(2, 1, 5, 5),)).module()
    x = torch.randn(2, 1, 5, 5)
    compat.set_exported_batchnorm_training(model, training=False)
    running = model.state_dict()["1.running_mean"].clone()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    second = model(x)
    assert torch.equal(model.state_dict()["1.running_mean"], running)  # statistics frozen
    assert not torch.equal(first, second)  # dropout still in training mode
