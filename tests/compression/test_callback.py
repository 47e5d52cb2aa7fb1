"""What every compression callback shares: one order check where callbacks are assembled, the
contract checked at setup (naming what is missing), the strategies each supports (checked on
CPU), and a module whose training_step never calls combine_loss."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn

from slimlab.compression import check_compression_order
from slimlab.compression.bnb_weights import BitsAndBytesWeights
from slimlab.compression.callback import CompressionCallback
from slimlab.compression.distillation import KnowledgeDistillation
from slimlab.compression.pruning import StructuredPruning
from slimlab.compression.quantization import QuantizationAwareTraining
from slimlab.data import DigitsDataModule
from slimlab.models import ImageClassifier
from slimlab.utils.errors import ConfigError

TEACHER = {"_target_": "slimlab.models.nets.SmallCNN", "widths": [8, 16]}
OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01}


def every_callback() -> list[CompressionCallback]:
    return [
        StructuredPruning(report=False),
        KnowledgeDistillation(teacher_net=TEACHER, report=False),
        QuantizationAwareTraining(start_epoch=2, report=False),
        BitsAndBytesWeights(report=False),
    ]


def module(net: nn.Module | None = None) -> ImageClassifier:
    model = ImageClassifier(net=TEACHER, optimizer=OPTIMIZER)
    if net is not None:
        model.net = net
    return model


def trainer() -> L.Trainer:
    return L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False)


# -- the order, checked once where callbacks are assembled --------------------------------------
def test_the_supported_order_passes_and_other_callbacks_are_ignored() -> None:
    check_compression_order([ModelCheckpoint(), *every_callback()])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (KnowledgeDistillation(teacher_net=TEACHER), StructuredPruning()),
        (QuantizationAwareTraining(), KnowledgeDistillation(teacher_net=TEACHER)),
        (BitsAndBytesWeights(), StructuredPruning()),
    ],
)
def test_stages_out_of_order_are_refused(first, second) -> None:
    with pytest.raises(ConfigError, match="compression runs prune -> distill -> quantize"):
        check_compression_order([first, second])


def test_quantization_must_start_after_the_last_pruning_step() -> None:
    prune = StructuredPruning(start_epoch=1, end_epoch=4, steps=3)  # epochs 1, 2, 3
    with pytest.raises(
        ConfigError,
        match=r"compression.qat.start_epoch=3 is not after the last pruning step \(epoch 3\): "
        r"give compression.qat.start_epoch >= 4",
    ):
        check_compression_order([prune, QuantizationAwareTraining(start_epoch=3)])
    check_compression_order([prune, QuantizationAwareTraining(start_epoch=4)])
    # 8-bit weights rewrite the network after fit: any pruning schedule comes first
    check_compression_order([prune, BitsAndBytesWeights()])


def test_layers_hooked_by_name_cannot_meet_a_callback_that_renames_them() -> None:
    pairs = [["features.2", "features.2"]]
    distill = KnowledgeDistillation(teacher_net=TEACHER, feature_pairs=pairs)
    with pytest.raises(ConfigError, match="feature_pairs=.* cannot be combined with"):
        check_compression_order([distill, QuantizationAwareTraining(start_epoch=1)])
    check_compression_order(
        [KnowledgeDistillation(teacher_net=TEACHER), QuantizationAwareTraining()]
    )


# -- the contract, checked at setup by every compression callback ------------------------------
class NoLogits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> tuple:
        return (self.conv(x), "features")


def no_example() -> ImageClassifier:
    model = module()
    model.example_input_array = None
    return model


def list_example() -> ImageClassifier:
    model = module()
    model.example_input_array = [torch.zeros(1, 1, 8, 8)]
    return model


class PlainModule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 2)
        self.example_input_array = torch.zeros(1, 4)


@pytest.mark.parametrize("callback", every_callback(), ids=lambda c: c.key)
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (PlainModule, "needs a slimlab.models.SlimModule"),
        (no_example, "needs ImageClassifier.example_input_array, which is not set"),
        (list_example, "to be a tensor or a dict of named tensors; it is list"),
        (lambda: module(NoLogits()), "returned tuple, which holds no logits"),
        (
            lambda: module(nn.Linear(3, 10)),
            r"fails on its example_input_array float32\(1, 1, 8, 8\)",
        ),
    ],
    ids=["not-slim", "no-example", "list-example", "no-logits", "wrong-input"],
)
def test_contract_problems_are_named_at_setup(callback, make, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        callback.setup(trainer(), make(), "fit")
    assert callback.key in str(info.value)


# -- strategies: each callback works under these or refuses in one line -----------------------
def sharded_strategies(compose_cfg) -> list:
    strategies = [instantiate(compose_cfg(["trainer=fsdp"]).trainer.strategy)]
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return strategies  # DeepSpeed is an optional, GPU-only dependency
    return [*strategies, instantiate(compose_cfg(["trainer=deepspeed"]).trainer.strategy)]


@pytest.mark.parametrize("callback", every_callback(), ids=lambda c: c.key)
def test_sharded_strategies_are_refused_at_setup_in_one_line(compose_cfg, callback) -> None:
    for strategy in sharded_strategies(compose_cfg):
        with pytest.raises(ConfigError) as info:
            callback.setup(SimpleNamespace(strategy=strategy), module(), "fit")
        message = str(info.value)
        assert message.startswith(f"{callback.key} does not support {type(strategy).__name__}")
        assert "trainer=default, cpu, gpu, mps (one device), ddp or ddp_sim" in message
        assert "\n" not in message
    for supported in (SingleDeviceStrategy(device="cpu"), DDPStrategy()):
        callback.check_strategy(SimpleNamespace(strategy=supported))


# -- a module that never calls combine_loss ------------------------------------------------------
class NoCombine(ImageClassifier):
    """Computes its own loss and never calls combine_loss (so loss terms would be lost)."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)


def test_loss_terms_never_combined_stop_the_run_after_the_first_batch(tmp_path) -> None:
    model = NoCombine(net={**TEACHER, "widths": [4, 8]}, optimizer=OPTIMIZER)
    steps: list[int] = []

    class CountSteps(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            steps.append(trainer.global_step)

    fit = L.Trainer(
        max_epochs=2,
        callbacks=[CountSteps(), KnowledgeDistillation(teacher_net=TEACHER, report=False)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ConfigError, match=r"added the loss term\(s\) \['kd'\], but NoCombine"):
        fit.fit(model, DigitsDataModule(batch_size=64))
    assert steps == [1], "the run stops after its first training batch"
