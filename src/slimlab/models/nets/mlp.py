"""A multi-layer perceptron over flattened images."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from slimlab.utils.errors import require


class MLP(nn.Module):
    """Flatten -> [Linear -> BatchNorm1d -> ReLU -> Dropout] x len(hidden) -> Linear."""

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 8, 8),
        hidden: Sequence[int] = (256, 128),
        num_classes: int = 10,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        require(
            all(int(h) > 0 for h in hidden),
            f"net.hidden={list(hidden)} is invalid: give positive layer widths",
        )
        require(0.0 <= dropout < 1.0, f"net.dropout={dropout} is out of range: give [0, 1)")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
