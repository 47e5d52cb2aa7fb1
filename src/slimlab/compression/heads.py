"""Attention heads as torch-pruning must see them, and the head counts a pruned model keeps.

A multi-head attention module splits its q/k/v projections into `heads x head_dim` and reads
its own head-count attributes in its forward pass. Pruning that narrows q/k/v must therefore
(1) tell torch-pruning which Linear layers are q/k/v and how many heads each has, so it removes
whole heads or the same dims of every head, and (2) afterwards write the new counts into the
module, so it computes what its structure says (`q/k/v width == heads * head_dim`).

Timeline: `find_attention(net)` before the pruner is built (the `num_heads` torch-pruning
takes) -> the pruner steps -> `set_heads(net, counts)` with the pruner's updated counts ->
`head_counts(net)` goes into the checkpoint's structure entry -> on reload the history is
replayed and `set_heads` writes the recorded counts back.

Known layouts (matched by attribute names, so subclasses and copies work too):
- fused `qkv` Linear with `num_heads` / `head_dim` (our ViT, timm's `Attention`);
- `query` / `key` / `value` with `num_attention_heads` / `attention_head_size` /
  `all_head_size` (Hugging Face BERT, RoBERTa, ELECTRA, ViT, ...);
- `q_lin` / `k_lin` / `v_lin` with `n_heads` (Hugging Face DistilBERT).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Layout:
    """Where one attention layout keeps its projections and head counts."""

    projections: tuple[str, ...]  # q/k/v Linear attribute names (one name: fused q, k, v)
    heads: str  # attribute holding the head count
    head_dim: str | None  # attribute holding the width of one head, if any
    all_heads: str | None  # attribute holding heads * head_dim, if any


LAYOUTS = (
    Layout(("qkv",), "num_heads", "head_dim", None),
    Layout(
        ("query", "key", "value"), "num_attention_heads", "attention_head_size", "all_head_size"
    ),
    Layout(("q_lin", "k_lin", "v_lin"), "n_heads", "attention_head_size", None),
)


def layout_of(module: nn.Module) -> Layout | None:
    """The layout `module` follows, or None when it is no attention module we know."""
    for layout in LAYOUTS:
        if all(isinstance(getattr(module, p, None), nn.Linear) for p in layout.projections) and (
            isinstance(getattr(module, layout.heads, None), int)
        ):
            return layout
    return None


def find_attention(net: nn.Module) -> dict[str, Layout]:
    """Every attention module of `net` in a known layout, by name."""
    found = {}
    for name, module in net.named_modules():
        layout = layout_of(module)
        if layout is not None:
            found[name] = layout
    return found


def projections(module: nn.Module, layout: Layout) -> list[nn.Linear]:
    """The q/k/v Linear layers of one attention module."""
    return [getattr(module, p) for p in layout.projections]


def qkv_width(module: nn.Module, layout: Layout) -> int:
    """The width of q (or of k and v): all heads together."""
    first = projections(module, layout)[0]
    return first.out_features // (3 if len(layout.projections) == 1 else 1)


def torch_pruning_heads(net: nn.Module) -> dict[nn.Linear, int]:
    """torch-pruning's `num_heads`: every q/k/v Linear -> its module's head count."""
    counts = {}
    for name, layout in find_attention(net).items():
        module = net.get_submodule(name)
        for linear in projections(module, layout):
            counts[linear] = int(getattr(module, layout.heads))
    return counts


def head_counts(net: nn.Module) -> dict[str, int]:
    """The head count of every attention module, by name (plain data for a checkpoint)."""
    return {
        name: int(getattr(net.get_submodule(name), layout.heads))
        for name, layout in find_attention(net).items()
    }


def set_heads(net: nn.Module, counts: dict[str, int]) -> None:
    """Write head counts into the attention modules and re-derive their head widths."""
    layouts = find_attention(net)
    for name, heads in counts.items():
        module, layout = net.get_submodule(name), layouts[name]
        width = qkv_width(module, layout)
        if heads < 1 or width % heads:
            raise RuntimeError(
                f"attention {name!r}: q/k/v width {width} does not split into {heads} heads"
            )
        setattr(module, layout.heads, int(heads))
        if layout.head_dim is not None:
            setattr(module, layout.head_dim, width // heads)
        if layout.all_heads is not None:
            setattr(module, layout.all_heads, width)
        if hasattr(module, "scaling"):  # Hugging Face keeps 1/sqrt(head_dim) precomputed
            module.scaling = (width // heads) ** -0.5


def heads_from_pruner(net: nn.Module, pruner_heads: dict[nn.Module, int]) -> dict[str, int]:
    """The head counts torch-pruning's `num_heads` holds after its steps, by module name."""
    counts = {}
    for name, layout in find_attention(net).items():
        module = net.get_submodule(name)
        counts[name] = int(pruner_heads[projections(module, layout)[0]])
    return counts
