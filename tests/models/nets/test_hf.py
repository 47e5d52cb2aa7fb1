"""The Hugging Face adapter: tiny random models from a config dict, names, bad input."""

from __future__ import annotations

import pytest
import torch

from slimlab.models import logits_of
from slimlab.models.nets import hf_sequence_classifier
from slimlab.utils.errors import ConfigError

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 50,
    "max_position_embeddings": 16,
}


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_config_dict_builds_a_random_model_of_that_type(model_type: str) -> None:
    config = {"model_type": model_type, **TINY}
    if model_type == "distilbert":  # DistilBERT names its sizes differently
        config = {"model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2}
        config |= {"hidden_dim": 64, "vocab_size": 50, "max_position_embeddings": 16}
    net = hf_sequence_classifier(config=config, num_labels=3)
    assert net.config.model_type == model_type and net.config.num_labels == 3
    ids = torch.randint(0, 50, (4, 10))
    out = net(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert logits_of(out).shape == (4, 3) and logits_of(out).dtype == torch.float32


def test_same_seed_same_random_model() -> None:
    def first_weight(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        net = hf_sequence_classifier(config={"model_type": "bert", **TINY})
        return net.bert.embeddings.word_embeddings.weight

    assert torch.equal(first_weight(0), first_weight(0))


def test_a_local_pretrained_folder_loads_with_a_new_head_and_overrides(tmp_path) -> None:
    torch.manual_seed(0)
    saved = hf_sequence_classifier(config={"model_type": "bert", **TINY}, num_labels=2)
    saved.save_pretrained(tmp_path / "tiny")
    net = hf_sequence_classifier(
        str(tmp_path / "tiny"), config={"hidden_dropout_prob": 0.3}, num_labels=2
    )
    assert net.config.hidden_dropout_prob == 0.3
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(net.state_dict()[name], value, msg=name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"config": {"hidden_size": 32}}, r"model.net.config.model_type=None is not"),
        ({"config": {"model_type": "no-such-type"}}, r"model_type='no-such-type' is not"),
        ({"config": {"model_type": "bert"}, "num_labels": 1}, r"model.net.num_labels=1"),
    ],
)
def test_bad_arguments_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        hf_sequence_classifier(**kwargs)
