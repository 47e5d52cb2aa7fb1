"""Hugging Face sequence classifiers as SlimLab nets, built from a Hub name or a config dict.

The net is the `AutoModelForSequenceClassification` itself (BERT, DistilBERT, RoBERTa, ...),
unwrapped: it takes `input_ids` and `attention_mask` as keyword arguments and returns a
`SequenceClassifierOutput` whose `logits` the contract reads (`slimlab.models.logits_of`),
and its modules keep Hugging Face's names (`bert.encoder.layer.0.attention.self.query`),
so pruning and distillation recipes written for Hugging Face models apply as they are.
transformers is the optional `hf` extra, imported only when a net is built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimlab.utils.errors import ConfigError, require
from slimlab.utils.hf import from_hub
from slimlab.utils.optional import import_optional
from slimlab.utils.plain import to_plain

KEY = "model.net"


def hf_sequence_classifier(
    pretrained_model_name_or_path: str | None = None,
    config: dict[str, Any] | None = None,
    num_labels: int = 2,
) -> nn.Module:
    """An `AutoModelForSequenceClassification` with `num_labels` outputs, in float32.

    With `pretrained_model_name_or_path` (a Hub id such as "prajjwal1/bert-tiny", or a folder
    written by `save_pretrained`): the pretrained weights, a new classification head, and
    `config` entries (if any) overriding the pretrained config (e.g. hidden_dropout_prob).
    Without it: a randomly initialised model of `config`, which must name its `model_type`
    (e.g. {model_type: bert, hidden_size: 32, num_hidden_layers: 2, ...}).
    """
    config = dict(to_plain(config) or {})
    require(
        isinstance(num_labels, int) and num_labels >= 2,
        f"{KEY}.num_labels={num_labels} is out of range: give the number of classes, >= 2",
    )
    transformers = import_optional("transformers", "hf")
    auto = transformers.AutoModelForSequenceClassification
    if pretrained_model_name_or_path:
        return from_hub(
            lambda name: auto.from_pretrained(
                name, num_labels=num_labels, dtype=torch.float32, **config
            ),
            pretrained_model_name_or_path,
            f"{KEY}.pretrained_model_name_or_path",
            f"set {KEY}.pretrained_model_name_or_path=null and give {KEY}.config, a randomly "
            "initialised model, e.g. {model_type: bert, hidden_size: 32, num_hidden_layers: 2, "
            "num_attention_heads: 2, intermediate_size: 64}",
        )
    model_type = config.pop("model_type", None)
    known = sorted(transformers.CONFIG_MAPPING.keys())
    require(
        model_type in known,
        f"{KEY}.config.model_type={model_type!r} is not a Hugging Face model type: give a "
        f"pretrained_model_name_or_path, or a config with model_type one of e.g. bert, "
        f"distilbert, roberta, albert, electra ({len(known)} known)",
    )
    try:
        hf_config = transformers.AutoConfig.for_model(model_type, num_labels=num_labels, **config)
    except (TypeError, ValueError) as exc:
        message = f"{KEY}.config={config} is not a valid {model_type} config: {exc}"
        raise ConfigError(message) from exc
    return auto.from_config(hf_config, dtype=torch.float32)
