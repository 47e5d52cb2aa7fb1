"""Every experiment and every config-group option composes and instantiates."""

from __future__ import annotations

import lightning as L
import pytest
from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger

from slimlab.utils.compose import CONFIG_DIR
from slimlab.utils.errors import find_config_error
from slimlab.utils.instantiate import instantiate_callbacks, instantiate_loggers


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def build_all(cfg) -> dict:
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, _recursive_=False)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    callbacks += instantiate_callbacks(cfg.get("compression"))
    loggers = instantiate_loggers(cfg.get("logger"))
    return {"data": datamodule, "model": model, "callbacks": callbacks, "loggers": loggers}


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiment_composes_and_instantiates(compose_cfg, experiment: str, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no downloads
    cfg = compose_cfg([f"experiment={experiment}"])
    assert cfg.name != "default", f"experiment {experiment} should set its own run name"
    pretrained = cfg.model.get("net", {}).get("pretrained_model_name_or_path")
    try:
        built = build_all(cfg)
    except Exception as exc:  # a Hub model not in this machine's cache: the offline message
        error = find_config_error(exc)
        if not pretrained or error is None or "could not be loaded" not in str(error):
            raise
        return
    assert isinstance(built["data"], L.LightningDataModule)
    assert isinstance(built["model"], L.LightningModule)
    trainer = instantiate(cfg.trainer, callbacks=built["callbacks"], logger=False)
    assert isinstance(trainer, L.Trainer)


@pytest.mark.parametrize(
    "group", ["data", "model", "optimizer", "scheduler", "callbacks", "compression", "debug"]
)
def test_every_group_option_composes_and_instantiates(compose_cfg, group: str) -> None:
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}"])
        built = build_all(cfg)
        assert all(isinstance(c, Callback) for c in built["callbacks"]), (group, option)
        model = built["model"]
        if group in ("optimizer", "scheduler"):
            optim = model.configure_optimizers()
            assert optim is not None, (group, option)


@pytest.mark.parametrize("option", options("logger"))
def test_every_logger_option_instantiates(compose_cfg, option: str, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg([f"logger={option}"])
    loggers = instantiate_loggers(cfg.get("logger"))
    assert all(isinstance(lg, Logger) for lg in loggers)
    assert bool(loggers) == (option != "none"), option


@pytest.mark.parametrize("option", ["default", "cpu", "ddp_sim"])
def test_cpu_trainer_options_instantiate(compose_cfg, option: str) -> None:
    cfg = compose_cfg([f"trainer={option}"])
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer.num_devices == (2 if option == "ddp_sim" else 1)


def test_gpu_trainer_options_compose(compose_cfg) -> None:
    """gpu/mps/ddp need the hardware to instantiate; their configs must compose and resolve."""
    for option in ["gpu", "mps", "ddp"]:
        cfg = compose_cfg([f"trainer={option}"])
        assert cfg.trainer.accelerator in ("gpu", "mps")
    assert compose_cfg(["trainer=ddp"]).trainer.strategy == "ddp"


def test_fsdp_strategy_object_builds(compose_cfg) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = compose_cfg(["trainer=fsdp"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.sharding_strategy.name == cfg.trainer.strategy.sharding_strategy


def test_deepspeed_strategy_object_builds(compose_cfg) -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is an optional, GPU-only dependency")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    cfg = compose_cfg(["trainer=deepspeed"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DeepSpeedStrategy)
    assert strategy.config["zero_optimization"]["stage"] == cfg.trainer.strategy.stage


def test_eval_config_composes(compose_cfg) -> None:
    cfg = compose_cfg(["ckpt_path=some.ckpt"], config_name="eval")
    assert cfg.ckpt_path == "some.ckpt"
    assert cfg.get("data") is None


def test_optimizer_group_lands_in_model(compose_cfg) -> None:
    cfg = compose_cfg(["optimizer=sgd", "model.optimizer.lr=0.05"])
    assert cfg.model.optimizer._target_ == "torch.optim.SGD"
    assert cfg.model.optimizer.lr == 0.05


def test_config_keys_people_sweep_have_comments() -> None:
    """Each numeric key in the data/optimizer/scheduler/model groups is documented inline."""
    undocumented = []
    for group in ["data", "optimizer", "scheduler"]:
        for path in (CONFIG_DIR / group).glob("*.yaml"):
            for line in path.read_text().splitlines():
                key, sep, value = line.partition(":")
                value = value.strip()
                if not sep or line.startswith("#") or not value:
                    continue
                if value.replace(".", "", 1).replace("-", "", 1).isdigit() and "#" not in line:
                    undocumented.append(f"{path.name}: {line.strip()}")
    assert not undocumented, undocumented
