"""The ViT: shapes, traceability, config validation, and that torch-pruning can remove whole
attention heads and MLP width the way its timm ViT example does."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

from slimlab.models import load_module
from slimlab.models.nets import VisionTransformer
from slimlab.models.nets.vit import Attention
from slimlab.train import train
from slimlab.utils.compose import QUIET
from slimlab.utils.errors import ConfigError


def heads_match_widths(net: VisionTransformer) -> bool:
    """Every Attention's num_heads x head_dim is what its qkv and proj layers hold."""
    return all(
        m.qkv.out_features == 3 * m.num_heads * m.head_dim
        and m.proj.in_features == m.num_heads * m.head_dim
        for m in net.modules()
        if isinstance(m, Attention)
    )


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (3, 1, 8, 8)),
        ({"patch_size": 2, "depth": 2}, (3, 1, 8, 8)),
        ({"image_size": 32, "in_channels": 3, "patch_size": 8, "num_classes": 7}, (2, 3, 32, 32)),
    ],
)
def test_vit_maps_images_to_class_logits(kwargs: dict, shape: tuple) -> None:
    net = VisionTransformer(**kwargs)
    out = net(torch.randn(*shape))
    assert out.shape == (shape[0], kwargs.get("num_classes", 10))
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert heads_match_widths(net)


def test_vit_traces_with_fx_and_export_to_the_same_output() -> None:
    net = VisionTransformer().eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(torch.fx.symbolic_trace(net)(x), net(x))
    exported = torch.export.export(net, (x,))
    torch.testing.assert_close(exported.module()(x), net(x))


@pytest.mark.parametrize("bottleneck", [True, False])
def test_torch_pruning_removes_half_the_heads_as_its_timm_example_does(bottleneck) -> None:
    torch.manual_seed(0)
    net = VisionTransformer(dim=64, heads=4, depth=2).eval()
    num_heads = {m.qkv: m.num_heads for m in net.modules() if isinstance(m, Attention)}
    ignored = [net.head] + ([b.mlp.fc2 for b in net.blocks] if bottleneck else [])
    pruner = tp.pruner.BasePruner(
        net,
        torch.randn(1, 1, 8, 8),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,  # MLP hidden width (and, unless bottleneck, the token width)
        ignored_layers=ignored,  # bottleneck: fc2 ignored keeps the token width
        num_heads=num_heads,
        prune_num_heads=True,  # whole heads go, each keeps its width
        prune_head_dims=False,
        head_pruning_ratio=0.5,
        round_to=1,
    )
    for group in pruner.step(interactive=True):
        group.prune()
    for m in net.modules():  # as the example does after the step: the attributes follow
        if isinstance(m, Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    dim = 64 if bottleneck else 32
    assert [(b.attn.num_heads, b.attn.head_dim) for b in net.blocks] == [(2, 16), (2, 16)]
    assert [(b.mlp.fc1.out_features, b.attn.proj.out_features) for b in net.blocks] == [
        (64, dim),
        (64, dim),
    ]
    assert heads_match_widths(net)
    assert net(torch.randn(5, 1, 8, 8)).shape == (5, 10)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"patch_size": 3}, "net.patch_size=3 does not divide net.image_size=8"),
        ({"dim": 30, "heads": 4}, "net.dim=30 does not divide by net.heads=4"),
        ({"depth": 0}, "net.depth=0"),
        ({"mlp_ratio": 0}, "net.mlp_ratio=0"),
        ({"dropout": 1.0}, "net.dropout=1.0"),
    ],
)
def test_bad_vit_arguments_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        VisionTransformer(**kwargs)


@pytest.mark.slow
def test_digits_vit_experiment_learns_and_its_checkpoint_reloads(compose_cfg) -> None:
    cfg = compose_cfg(["experiment=digits_vit", "trainer.max_epochs=5", *QUIET])
    metrics, objects = train(cfg)
    assert float(metrics["test/acc"]) >= 0.85  # 10 classes; 40 epochs reach 97%
    model = load_module(objects["trainer"].checkpoint_callback.best_model_path)
    assert isinstance(model.net, VisionTransformer) and heads_match_widths(model.net)
    assert [b.attn.num_heads for b in model.net.blocks] == [4, 4, 4, 4]
