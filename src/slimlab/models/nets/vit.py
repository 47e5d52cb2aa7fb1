"""A small Vision Transformer (Dosovitskiy et al. 2021), laid out as timm's `VisionTransformer`.

Image (C, H, W) -> non-overlapping patch x patch patches, each projected to `dim` by a
strided conv -> a learned [CLS] token is prepended and learned position embeddings added ->
`depth` pre-norm blocks (multi-head self-attention, then an MLP, each with a residual) ->
layer norm -> the [CLS] token -> linear head.

Built to be pruned the way Torch-Pruning's timm ViT example prunes: each `Attention` holds one
`qkv` linear and the `num_heads` / `head_dim` attributes its forward reads (so a pruner can
drop whole heads or narrow them and then set the attributes), its output is reshaped with -1
rather than `dim`, and the scale comes from the actual head width. Each `Mlp` is fc1 -> GELU
-> fc2. The forward has no data-dependent control flow, so torch.fx and torch.export trace it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimlab.utils.errors import require


class Attention(nn.Module):
    """Multi-head self-attention over (B, N, dim) tokens, with one fused qkv projection."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = dropout
        self.qkv = nn.Linear(dim, 3 * num_heads * self.head_dim)
        self.proj = nn.Linear(num_heads * self.head_dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim); unbind: torch-pruning maps it
        drop = self.attn_dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # scale 1/sqrt(head_dim)
        x = x.transpose(1, 2).reshape(b, n, -1)  # -1: the width pruning left, not `dim`
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """The transformer's feed-forward part: fc1 -> GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, round(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifier for (B, in_channels, image_size, image_size) images -> (B, num_classes).

    `dim` must divide by `heads`; `image_size` by `patch_size` (8x8 digits: patch 4 gives 4
    patch tokens, patch 2 gives 16). The defaults are the digits model of configs/model/vit.yaml.
    """

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 4,
        in_channels: int = 1,
        num_classes: int = 10,
        dim: int = 96,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        require(
            patch_size > 0 and image_size > 0 and image_size % patch_size == 0,
            f"net.patch_size={patch_size} does not divide net.image_size={image_size}: give a "
            "patch size that tiles the image (8x8 digits: 1, 2, 4 or 8)",
        )
        require(
            heads > 0 and dim > 0 and dim % heads == 0,
            f"net.dim={dim} does not divide by net.heads={heads}: give a dim that is a "
            "multiple of heads (head width = dim / heads)",
        )
        require(depth >= 1, f"net.depth={depth} is out of range: give 1 or more blocks")
        require(mlp_ratio > 0, f"net.mlp_ratio={mlp_ratio} is out of range: give a ratio > 0")
        require(0.0 <= dropout < 1.0, f"net.dropout={dropout} is out of range: give [0, 1)")
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, num_patches, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def _init_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated-normal linear weights, zero biases, unit layer norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
