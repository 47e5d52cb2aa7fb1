"""A library's complaint about a value is reported with the config key it came from."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from slimlab.utils.errors import ConfigError, describe_error
from slimlab.utils.instantiate import (
    build,
    check_accelerator,
    check_optimizer_config,
    instantiate_trainer,
)


def _trainer_error(compose_cfg, overrides: list[str], extra: dict | None = None) -> str:
    cfg = compose_cfg(overrides)
    if extra:
        with open_dict(cfg):
            cfg.trainer.update(extra)
    with pytest.raises(ConfigError) as info:
        instantiate_trainer(cfg.trainer, logger=False)
    return str(info.value)


def test_lightning_errors_name_the_trainer_key(compose_cfg) -> None:
    message = _trainer_error(compose_cfg, ["trainer.max_epochs=-5"])
    assert message.startswith("trainer.max_epochs=-5: `max_epochs` must be a non-negative")
    message = _trainer_error(compose_cfg, ["trainer.precision=99"])
    assert message.startswith("trainer.precision=99: Precision 99 is invalid. Allowed")
    message = _trainer_error(compose_cfg, [], extra={"max_epoch": 5})
    assert message.startswith("trainer.max_epoch is not a key of trainer")
    assert "did you mean trainer.max_epochs" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without")
def test_gpu_trainer_on_a_machine_without_gpu_says_so(compose_cfg) -> None:
    for overrides in (["trainer=gpu"], ["trainer=ddp", "trainer.devices=4"]):
        with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu needs a CUDA GPU"):
            check_accelerator(compose_cfg(overrides).trainer)


def test_more_gpus_than_the_machine_has_says_so(compose_cfg, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = compose_cfg(["trainer=ddp", "trainer.devices=4"])
    with pytest.raises(ConfigError, match=r"^trainer.devices=4 asks for 4 GPUs and this machine"):
        check_accelerator(cfg.trainer)
    check_accelerator(compose_cfg(["trainer=ddp", "trainer.devices=1"]).trainer)


def test_torch_optimizer_and_scheduler_values_are_checked_up_front(compose_cfg) -> None:
    cfg = compose_cfg(["model.optimizer.weight_decay=-1"])
    with pytest.raises(ConfigError, match=r"^model.optimizer.weight_decay=-1: Invalid weight"):
        check_optimizer_config(cfg.model)
    cfg = compose_cfg(["scheduler=plateau", "model.scheduler.factor=2"])
    with pytest.raises(ConfigError, match=r"^model.scheduler.factor=2: Factor should be < 1"):
        check_optimizer_config(cfg.model)
    check_optimizer_config(compose_cfg([]).model)  # the defaults hold


def test_unimportable_target_and_real_crashes() -> None:
    with pytest.raises(ConfigError, match=r"^logger.csv._target_=nope.Nope does not import: "):
        build(OmegaConf.create({"_target_": "nope.Nope"}), "logger.csv")
    # a TypeError raised inside a constructor whose arguments fit is a crash, not bad input
    node = OmegaConf.create({"_target_": "torch.zeros", "size": "not a size"})
    with pytest.raises(Exception) as info:
        build(node, "thing")
    assert describe_error(info.value) is None
