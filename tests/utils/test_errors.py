"""Bad input worded once: Hydra's composition errors name the key, the value and what is valid."""

from __future__ import annotations

import pytest

from slimlab.utils.errors import ConfigError, describe_error


def _composition_error(compose_cfg, overrides: list[str]) -> str:
    with pytest.raises(Exception) as info:
        compose_cfg(overrides)
    message = describe_error(info.value)
    assert message is not None, info.value
    return message


def test_misspelt_key_names_the_closest_valid_keys(compose_cfg) -> None:
    message = _composition_error(compose_cfg, ["trainer.max_epoch=5"])
    assert message.startswith("trainer.max_epoch is not a key of trainer")
    assert "did you mean trainer.max_epochs" in message
    assert "+trainer.max_epoch=5" in message  # how to add a new key on purpose
    message = _composition_error(compose_cfg, ["compression=prune", "compression.prune.amout=3"])
    assert "did you mean compression.prune.amount" in message


def test_unknown_group_option_lists_the_options(compose_cfg) -> None:
    message = _composition_error(compose_cfg, ["optimizer=adamm"])
    assert "optimizer=adamm is not an option" in message
    assert "configs/optimizer/adamm.yaml" in message
    assert "closest: adam, adamw" in message


def test_unparsable_override_is_named(compose_cfg) -> None:
    message = _composition_error(compose_cfg, ["trainer.max_epochs=[1"])
    assert "'trainer.max_epochs=[1' does not parse" in message


def test_config_error_is_found_in_the_cause_chain_and_crashes_are_not_bad_input() -> None:
    try:
        try:
            raise ConfigError("data.batch_size=0 is out of range")
        except ConfigError as inner:
            raise RuntimeError("wrapped by a library") from inner
    except RuntimeError as outer:
        assert describe_error(outer) == "data.batch_size=0 is out of range"
    assert describe_error(ZeroDivisionError("a bug")) is None
