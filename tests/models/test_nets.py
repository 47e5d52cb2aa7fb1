"""The plain networks: shapes, sizes and their config validation."""

from __future__ import annotations

import pytest
import torch

from slimlab.models.nets import MLP, CifarResNet, SmallCNN
from slimlab.utils.errors import ConfigError


@pytest.mark.parametrize(
    ("net", "shape"),
    [
        (MLP(input_shape=(1, 8, 8)), (4, 1, 8, 8)),
        (SmallCNN(in_channels=1), (4, 1, 8, 8)),
        (SmallCNN(in_channels=3), (4, 3, 32, 32)),
        (CifarResNet(depth=20), (4, 3, 32, 32)),
    ],
)
def test_nets_map_images_to_class_logits(net: torch.nn.Module, shape: tuple) -> None:
    out = net(torch.randn(*shape))
    assert out.shape == (shape[0], 10)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_resnet_depths_have_the_papers_parameter_counts() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # He et al. 2016: ResNet-20 0.27M, ResNet-56 0.85M (projection shortcuts add a little)
    assert 0.26e6 < count(CifarResNet(depth=20)) < 0.30e6
    assert 0.84e6 < count(CifarResNet(depth=56)) < 0.90e6


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: CifarResNet(depth=21), "net.depth=21"),
        (lambda: SmallCNN(widths=[32, 0]), "net.widths"),
        (lambda: MLP(hidden=[-1]), "net.hidden"),
        (lambda: MLP(dropout=1.5), "net.dropout=1.5"),
    ],
)
def test_bad_net_arguments_name_the_key(build, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        build()
