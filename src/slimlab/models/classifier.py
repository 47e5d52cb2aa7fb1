"""The image-classification LightningModule: any `net` from config, trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from slimlab.models.classification import ClassificationModule
from slimlab.utils.plain import to_plain


class ImageClassifier(ClassificationModule):
    """Classifies images with `net`; logs loss, accuracy and the best validation accuracy.

    Batches are `(inputs, class indices)`; `net` is called through the contract (`call_net`,
    `logits_of`), so it may take a tensor or a dict of tensors and return logits or an object
    holding them.

    `net`, `optimizer` and `scheduler` are `_target_` configs (plain dicts in the checkpoint's
    hyper-parameters), so `load_from_checkpoint` rebuilds the same network. `optimizer` and
    `scheduler` are partials: called with the parameters / the optimizer. The example input
    is one zero image of `input_shape` (C, H, W).
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 8, 8),
        label_smoothing: float = 0.0,
        compile: bool = False,
    ) -> None:
        input_shape = list(to_plain(input_shape))
        super().__init__(
            net,
            optimizer,
            scheduler,
            num_classes,
            label_smoothing,
            compile,
            input_shape=input_shape,
        )
        self.example_input_array = torch.zeros(1, *input_shape)
