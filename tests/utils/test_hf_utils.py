"""Hugging Face glue: the missing-extra error and the one message for names that cannot load."""

from __future__ import annotations

import sys

import pytest

from slimlab.models.nets import hf_sequence_classifier
from slimlab.utils.errors import ConfigError

MISSING = "slimlab-tests/no-such-model"  # in no cache; the Hub is switched off below


@pytest.fixture
def hub_offline(monkeypatch) -> None:
    """HF_HUB_OFFLINE=1, as a user without network sets it: no request leaves the process."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_missing_transformers_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install -e "\.\[hf\]"'):
        hf_sequence_classifier(config={"model_type": "bert"})


@pytest.mark.usefixtures("hub_offline")
def test_a_name_that_cannot_load_offline_gives_one_message_with_the_fixes() -> None:
    with pytest.raises(ConfigError) as info:
        hf_sequence_classifier(MISSING)
    message = str(info.value)
    assert message.startswith(f"model.net.pretrained_model_name_or_path='{MISSING}' could not")
    assert "\n" not in message
    for fix in ("Connect to the internet", f"hf download {MISSING}", "HF_HUB_OFFLINE=1"):
        assert fix in message
    assert "model.net.config" in message  # the offline alternative: a random model


@pytest.mark.usefixtures("hub_offline")
def test_a_tokenizer_that_cannot_load_offline_points_to_the_word_vocabulary() -> None:
    from slimlab.data.synthetic_text import SyntheticTextDataModule

    with pytest.raises(ConfigError, match=r"data.tokenizer='.*' could not be loaded.*null"):
        SyntheticTextDataModule(tokenizer=MISSING).prepare_data()
