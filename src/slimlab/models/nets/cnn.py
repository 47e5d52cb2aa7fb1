"""A small VGG-style CNN with batch norm: the digits default."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from slimlab.utils.errors import require


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm2d -> ReLU, the unit pruning and QAT fuse and shrink."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class SmallCNN(nn.Module):
    """Stages of conv-bn-relu blocks, 2x2 max-pool between stages, global pool, linear head.

    `widths[i]` is the channel count of stage i; `blocks` conv blocks per stage.
    Works for any input size that survives len(widths)-1 halvings (8x8 digits, 28x28, 32x32).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        blocks: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        require(
            len(widths) > 0 and all(int(w) > 0 for w in widths),
            f"net.widths={list(widths)} is invalid: give one positive channel count per stage",
        )
        require(blocks >= 1, f"net.blocks={blocks} is out of range: give 1 or more")
        layers: list[nn.Module] = []
        c_in = in_channels
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(blocks):
                layers.append(conv_bn_relu(c_in, int(width)))
                c_in = int(width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))
