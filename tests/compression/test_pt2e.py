"""The PT2E stack: what QAT's networks do beyond the callback's own tests (test_quantization.py):
batch norm frozen across train(), graphs that follow their input's device, int8 residual blocks
in onnxruntime, and transformers (a ViT-style block, a tiny Hugging Face BERT) trained with QAT
and run in int8 by onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimlab.compression.pt2e import (
    convert_int8,
    float_view,
    observe_once,
    prepare_qat,
    set_qat_state,
)
from slimlab.data import DigitsDataModule
from slimlab.models.base import call_net, logits_of
from slimlab.models.nets import CifarResNet, SmallCNN
from slimlab.utils.onnx import export_onnx, onnx_session

ORT_INT8_MATMULS = {"QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat"}


def ort_kernels(path: Path, feed: dict[str, np.ndarray]) -> list[str]:
    """The kernels onnxruntime runs for `path` on `feed` (after its graph optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    return [e["args"]["op_name"] for e in events if e.get("cat") == "Node"]


def test_frozen_batch_norm_stays_frozen_across_train_and_eval() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    prepared = prepare_qat(SmallCNN(widths=(8, 16)), x[:1])
    set_qat_state(prepared, fake_quant=True, observe=True, freeze_bn=True)

    def statistics() -> torch.Tensor:
        return prepared.state_dict()["features.0.1.running_mean"].clone()

    frozen = statistics()
    prepared(x)
    prepared.eval()  # what Lightning does around validation
    prepared.train()
    assert prepared.training
    prepared(x)
    assert torch.equal(statistics(), frozen)
    set_qat_state(prepared, fake_quant=True, observe=True, freeze_bn=False)
    prepared(x)
    assert not torch.equal(statistics(), frozen)


class Positions(nn.Module):
    """Token embeddings plus position embeddings of `arange(length)`, as BERT and GPT build
    them: torch.export pins `arange` to the device it traced on."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens, self.positions = nn.Embedding(20, 8), nn.Embedding(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.head((self.tokens(input_ids) + self.positions(positions)).mean(1))


class DropoutAttention(nn.Module):
    """Dropout as Hugging Face attention has it: a module, and sdpa's dropout_p by mode."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.proj(x).unsqueeze(1)  # (N, 1 head, tokens, 8)
        p = 0.5 if self.training else 0.0
        return self.drop(F.scaled_dot_product_attention(q, q, q, dropout_p=p)).sum(1)[:, 0]


def test_dropout_follows_the_mode_of_prepared_and_int8_graphs() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 5, 8)
    prepared = prepare_qat(DropoutAttention(), x)
    observe_once(prepared, x)

    def random(net: nn.Module) -> bool:
        with torch.no_grad():
            return not torch.equal(net(x), net(x))

    assert random(prepared.train())
    assert not random(prepared.eval())  # validation during QAT: no dropout
    assert random(prepared.train())  # back to training: dropout again
    assert not random(convert_int8(prepared))  # the int8 network: inference only


def test_prepared_and_int8_graphs_follow_the_device_of_their_input() -> None:
    example = {"input_ids": torch.zeros(1, 6, dtype=torch.long)}
    prepared = prepare_qat(Positions(), example)
    observe_once(prepared, example)  # ranges to convert with, as training leaves them
    int8 = convert_int8(prepared)
    for net in (prepared, int8):  # the meta device: anything pinned to the CPU would fail
        moved = net.to("meta")
        out = call_net(moved, {"input_ids": torch.zeros(4, 6, dtype=torch.long, device="meta")})
        assert out.device.type == "meta" and out.shape == (4, 3)


@pytest.mark.slow
def test_resnet_blocks_run_in_int8_in_onnxruntime(tmp_path: Path) -> None:
    """The residual additions are quantized, so onnxruntime runs every convolution of a ResNet
    as QLinearConv and the additions as QLinearAdd (docs/quantization.md: 1.2x -> 3x+)."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    prepared = prepare_qat(CifarResNet(depth=8, width=8), x[:1])
    for _ in range(2):
        prepared(x)  # observe
    int8 = convert_int8(prepared)
    export_onnx(int8, x[:1], tmp_path / "resnet.int8.onnx", opset=20)
    kernels = ort_kernels(tmp_path / "resnet.int8.onnx", {"input": x.numpy()})
    assert "Conv" not in kernels and kernels.count("QLinearConv") == 9  # 1 + 3 stages x 2 + 2
    assert kernels.count("QLinearAdd") == 3  # one per residual block
    logits = onnx_session(tmp_path / "resnet.int8.onnx").run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, int8(x).numpy(), atol=0.05)


# -- transformers ----------------------------------------------------------------------------
class ViTBlockNet(nn.Module):
    """A ViT-style classifier on 8x8 digits: 2x2 patches (a strided conv), a class token and
    position embeddings, one pre-norm encoder block (multi-head self-attention from Linear q/k/v,
    GELU MLP), the class token's logits."""

    def __init__(self, dim: int = 32, heads: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.heads = heads
        self.patches = nn.Conv2d(1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.norm1, self.norm2, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.position
        b, n, d = tokens.shape
        q, k, v = self.qkv(self.norm1(tokens)).view(b, n, 3, self.heads, -1).unbind(2)
        attended = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
        tokens = tokens + self.proj(attended.transpose(1, 2).reshape(b, n, d))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(self.norm(tokens[:, 0]))


def tiny_bert() -> nn.Module:
    """A randomly initialised BertForSequenceClassification built from a config (no download)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=4,
    )
    return transformers.BertForSequenceClassification(config)


def digits() -> tuple[torch.Tensor, ...]:
    dm = DigitsDataModule(seed=0)
    dm.setup("fit")
    x, y = (torch.stack(t) for t in zip(*dm.data_train))
    xt, yt = (torch.stack(t) for t in zip(*dm.data_test))
    return x, y, xt, yt


def tokens(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Token ids and a padding mask; the class is the first token modulo 4 (learnable)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, 12), generator=generator)
    mask = (torch.rand(n, 12, generator=generator) > 0.25).long()
    mask[:, 0] = 1
    return {"input_ids": ids, "attention_mask": mask}, ids[:, 0] % 4


def take(inputs: dict | torch.Tensor, idx: torch.Tensor) -> dict | torch.Tensor:
    return {k: v[idx] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[idx]


def fit(net: nn.Module, x: dict | torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for idx in order.split(64):
            loss = F.cross_entropy(logits_of(call_net(net, take(x, idx))), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def accuracy(logits: torch.Tensor | np.ndarray, y: torch.Tensor) -> float:
    return float((torch.as_tensor(logits).argmax(1) == y).float().mean())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit_block", "tiny_bert"])
def test_transformers_train_with_qat_and_run_int8_in_onnxruntime(
    model: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    if model == "vit_block":
        net, (x, y, xt, yt), epochs = ViTBlockNet(), digits(), 15
    else:  # dict inputs with an integer attention mask, an output object holding logits
        net, epochs = tiny_bert(), 15
        (x, y), (xt, yt) = tokens(512, seed=0), tokens(256, seed=1)
    example = take(x, torch.arange(1))
    fit(net, x, y, epochs)  # fp32
    prepared = prepare_qat(net, example)
    set_qat_state(prepared, fake_quant=True, observe=True)
    fit(prepared, x, y, 2)  # QAT
    prepared.eval()
    with torch.no_grad():
        qat_acc = accuracy(call_net(prepared, xt), yt)
    assert qat_acc > (0.8 if model == "vit_block" else 0.6), qat_acc

    int8 = convert_int8(prepared)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    weights = [b for b in int8.buffers() if b.dtype == torch.int8]
    assert len(weights) >= len(linears)  # every Linear holds int8 weights
    with torch.no_grad():
        int8_logits = call_net(int8, xt)
    assert accuracy(int8_logits, yt) >= qat_acc - 0.03

    # the fp32 view and the int8 network export; onnxruntime runs int8 matrix products
    feed = {k: v.numpy() for k, v in xt.items()} if isinstance(xt, dict) else {"input": xt.numpy()}
    export_onnx(float_view(int8), example, tmp_path / "model.onnx", opset=20)
    export_onnx(int8, example, tmp_path / "model.int8.onnx", opset=20)
    assert ORT_INT8_MATMULS & set(ort_kernels(tmp_path / "model.int8.onnx", feed))
    ort_int8 = onnx_session(tmp_path / "model.int8.onnx").run(None, feed)[0]
    assert (ort_int8.argmax(1) == int8_logits.argmax(1).numpy()).mean() >= 0.98
    ort_fp32 = onnx_session(tmp_path / "model.onnx").run(None, feed)[0]
    assert accuracy(ort_fp32, yt) >= qat_acc - 0.05
