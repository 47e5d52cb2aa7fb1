"""A LightningModule and a DataModule written in lightning-hydra-template's style, plugged into
SlimLab as the README's "Bring your own model and data" section shows.

Hydra builds the module's arguments from config before the module (`net` is an
`nn.Module`, `optimizer` and `scheduler` are partials), as in lightning-hydra-template's
`MNISTLitModule`; the DataModule keeps a list from config in its hyper-parameters. The
lines marked `# SlimLab:` are the only ones a compression run needs on top.
tests/configs/{model,data}/lht_style.yaml are their configs.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset, random_split
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import Accuracy

from slimlab.models import SlimModule


class LitDigitsModule(SlimModule):  # SlimLab: was LightningModule
    """Classifies digits with `net`, trained by the `optimizer` / `scheduler` partials."""

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer: Any,
        scheduler: Any,
        compile: bool,
        input_shape: tuple[int, ...] = (1, 8, 8),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.net = net
        self.example_input_array = torch.zeros(1, *input_shape)  # SlimLab: tracing, MACs, export
        self.criterion = torch.nn.CrossEntropyLoss()
        self.train_acc = Accuracy(task="multiclass", num_classes=10)
        self.val_acc = Accuracy(task="multiclass", num_classes=10)
        self.test_acc = Accuracy(task="multiclass", num_classes=10)
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        self.val_loss.reset()
        self.val_acc.reset()
        self.val_acc_best.reset()

    def model_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        x, y = batch
        logits = self.forward(x)
        loss = self.criterion(logits, y)
        return loss, torch.argmax(logits, dim=1), y, logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, preds, targets, logits = self.model_step(batch)
        loss, _ = self.combine_loss(loss, batch, logits)  # SlimLab: callbacks' loss terms
        self.train_loss(loss)
        self.train_acc(preds, targets)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, preds, targets, _ = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(preds, targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        loss, preds, targets, _ = self.model_step(batch)
        self.test_loss(loss)
        self.test_acc(preds, targets)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, prog_bar=True)

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit":
            self.net = torch.compile(self.net)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.hparams.optimizer(params=self.trainer.model.parameters())
        if self.hparams.scheduler is not None:
            scheduler = self.hparams.scheduler(optimizer=optimizer)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {
                    "scheduler": scheduler,
                    "monitor": "val/loss",
                    "interval": "epoch",
                    "frequency": 1,
                },
            }
        return {"optimizer": optimizer}


class LitDigitsDataModule(L.LightningDataModule):
    """scikit-learn's digits, split by `train_val_test_split` (a list from config)."""

    def __init__(
        self,
        train_val_test_split: tuple[int, int, int] = (1257, 270, 270),
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_train = self.data_val = self.data_test = None

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is None:
            digits = load_digits()
            x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
            dataset = TensorDataset(x, torch.tensor(digits.target))
            self.data_train, self.data_val, self.data_test = random_split(
                dataset,
                lengths=list(self.hparams.train_val_test_split),
                generator=torch.Generator().manual_seed(42),
            )

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            pin_memory=self.hparams.pin_memory,
            shuffle=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, shuffle=False)
