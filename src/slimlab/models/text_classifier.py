"""The text-classification LightningModule: a token-id net (e.g. Hugging Face), cross-entropy."""

from __future__ import annotations

import torch
from typing_extensions import override

from slimlab.models.classification import ClassificationModule
from slimlab.utils.errors import require


class TextClassifier(ClassificationModule):
    """Classifies token sequences with `net`; logs what ImageClassifier logs.

    Batches are dicts {"input_ids", "attention_mask"} (int64, (B, max_length)) plus "labels";
    `net` is called with the first two as keyword arguments and may return logits or an
    object holding `logits` (a Hugging Face `SequenceClassifierOutput`). The example input is
    one all-padding sequence of `max_length` tokens with its mask, in those dtypes.
    `net`, `optimizer` and `scheduler` are `_target_` configs kept as plain hyper-parameters.
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        num_classes: int = 2,
        max_length: int = 64,
        label_smoothing: float = 0.0,
        compile: bool = False,
    ) -> None:
        require(
            isinstance(max_length, int) and max_length > 0,
            f"model.max_length={max_length} is out of range: give the tokenised sequence "
            "length, a positive integer (the data's max_length)",
        )
        super().__init__(
            net, optimizer, scheduler, num_classes, label_smoothing, compile, max_length=max_length
        )
        positions = getattr(getattr(self.net, "config", None), "max_position_embeddings", None)
        require(
            positions is None or max_length <= positions,
            f"model.max_length={max_length} is longer than the net's {positions} position "
            f"embeddings: give data.max_length <= {positions}",
        )
        self.example_input_array = {
            "input_ids": torch.zeros(1, max_length, dtype=torch.long),
            "attention_mask": torch.ones(1, max_length, dtype=torch.long),
        }

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        data_length = getattr(getattr(self.trainer, "datamodule", None), "max_length", None)
        require(
            data_length is None or data_length == self.hparams.max_length,
            f"model.max_length={self.hparams.max_length} does not match "
            f"data.max_length={data_length}: set model.max_length=${{data.max_length}}",
        )
