"""The contract beyond image tensors: a net that takes a dict of integer token ids and an
attention mask and returns an object holding `logits` (as Hugging Face models do). The
measuring module and every compression callback's setup path run on it with its own input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from slimlab.compression import measure
from slimlab.compression.distillation import KnowledgeDistillation
from slimlab.compression.pruning import StructuredPruning, layer_widths, prune_step
from slimlab.compression.quantization import QuantizationAwareTraining, qat_stage
from slimlab.models import ImageClassifier
from slimlab.models.base import logits_of

VOCAB, LENGTH, CLASSES = 50, 8, 4


@dataclass
class Output:
    """Like transformers' ModelOutput: an object with a `logits` attribute."""

    logits: torch.Tensor


class TinyTextNet(nn.Module):
    """Token ids + attention mask -> class logits (mean over the unmasked tokens); the
    embedding fails on anything but integer ids."""

    def __init__(self, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.proj = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Output:
        mask = attention_mask.unsqueeze(-1).float()
        hidden = self.act(self.proj(self.embed(input_ids))) * mask
        return Output(self.head(hidden.sum(1) / mask.sum(1).clamp(min=1)))


EXAMPLE = {
    "input_ids": torch.zeros(1, LENGTH, dtype=torch.long),
    "attention_mask": torch.ones(1, LENGTH, dtype=torch.long),
}
NET = {"_target_": "test_dict_inputs.TinyTextNet"}
OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01}


class TokenData(Dataset):
    """Sequences whose class is their first token modulo CLASSES (learnable, no network)."""

    def __init__(self, n: int = 64) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
        self.mask = (torch.rand(n, LENGTH, generator=generator) > 0.2).long()
        self.mask[:, 0] = 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        inputs = {"input_ids": self.ids[i], "attention_mask": self.mask[i]}
        return inputs, self.ids[i, 0] % CLASSES


def text_module(dim: int = 16) -> ImageClassifier:
    model = ImageClassifier(net={**NET, "dim": dim}, optimizer=OPTIMIZER, num_classes=CLASSES)
    model.example_input_array = {k: v.clone() for k, v in EXAMPLE.items()}
    return model


def loader() -> DataLoader:
    return DataLoader(TokenData(), batch_size=16)


def test_measuring_module_keeps_the_inputs_dtypes_and_reads_logits() -> None:
    net = TinyTextNet()
    batch = measure.example_batch(EXAMPLE, 5)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in batch.items()} == {
        "input_ids": (torch.long, (5, LENGTH)),
        "attention_mask": (torch.long, (5, LENGTH)),
    }
    # proj: 8 tokens x 16 -> 32, head: 32 -> 4 (the embedding is a lookup, not a MAC)
    assert measure.count_macs(net, EXAMPLE) == LENGTH * 16 * 32 + 32 * CLASSES
    result = measure.measure(net, EXAMPLE, repeats=2)
    assert result["params"] == sum(p.numel() for p in net.parameters())
    assert result["latency_ms_b64"] > 0 and result["size_bytes"] > 0
    net.train()
    correct, seen = measure.top1_counts(net, loader(), torch.device("cpu"))
    assert seen == 64 and 0 <= correct <= 64
    assert net.training, "measuring leaves the network in the mode it found"
    # HF-style dict batches with "labels" are read too
    dict_batches = [{**inputs, "labels": labels} for inputs, labels in loader()]
    assert measure.top1_counts(net, [dict_batches], torch.device("cpu")) == (correct, seen)


def test_pruning_setup_and_a_step_on_token_inputs() -> None:
    model = text_module()
    callback = StructuredPruning(amount=0.5, round_to=None, report=False)
    callback.setup(L.Trainer(max_epochs=2, logger=False), model, "fit")
    prune_step(callback._pruner)
    widths = layer_widths(model.net)
    assert widths == {"proj": 16, "head": CLASSES}, widths
    out = model(measure.example_batch(EXAMPLE, 3))
    assert out.shape == (3, CLASSES)


def one_epoch_trainer(tmp_path: Path, callbacks: list, **kwargs: Any) -> L.Trainer:
    """A quiet one-epoch trainer: 2 training batches, 1 validation batch (`kwargs` override)."""
    settings = {"limit_val_batches": 1, **kwargs}
    return L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **settings,
    )


def test_qat_trains_and_converts_a_net_that_multiplies_an_integer_mask(tmp_path) -> None:
    # PT2E quantizes the inputs of convolutions and linear layers only: the integer mask the
    # net multiplies into its activations stays an integer (torch.ao FX observed it and failed)
    model = text_module()
    trainer = one_epoch_trainer(tmp_path, [QuantizationAwareTraining(report=False)])
    trainer.fit(model, loader(), loader())
    assert qat_stage(model) == "convert"
    assert any(b.dtype == torch.int8 for b in model.net.buffers())  # int8 weights
    batch = measure.example_batch(EXAMPLE, 3)
    assert logits_of(model.net(**batch)).shape == (3, CLASSES)
    (result,) = trainer.test(model, loader(), verbose=False)  # the int8 net, on token inputs
    assert 0.0 <= result["test/acc"] <= 1.0


def test_distillation_trains_on_token_inputs_and_object_outputs(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    from slimlab.compression.bnb_weights import BitsAndBytesWeights

    model = text_module(dim=8)
    distill = KnowledgeDistillation(teacher_net={**NET, "dim": 16, "hidden": 64}, report=False)
    bnb = BitsAndBytesWeights(mode="int8", report={"repeats": 2})
    trainer = one_epoch_trainer(tmp_path, [distill, bnb], limit_val_batches=None)
    trainer.fit(model, loader(), loader())
    assert float(trainer.callback_metrics["train/kd"]) > 0
    trainer.test(model, loader())
    section = model.compression_report["bnb_weights"]
    assert section["layers"] == ["proj", "head"]
    assert section["params_ratio"] == 1.0  # int8 weights count as the weights they replace
    assert section["after"]["latency_ms_b1"] > 0 and 0 <= section["after"]["test_acc"] <= 1
