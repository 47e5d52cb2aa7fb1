"""The image-classification LightningModule: any `net` from config, trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from slimlab.models.base import SlimModule, call_net, logits_of
from slimlab.utils.errors import require
from slimlab.utils.plain import to_plain


class ImageClassifier(SlimModule):
    """Classifies images with `net`; logs loss, accuracy and the best validation accuracy.

    Batches are `(inputs, class indices)`; `net` is called through the contract (`call_net`,
    `logits_of`), so it may take a tensor or a dict of tensors and return logits or an object
    holding them.

    `net`, `optimizer` and `scheduler` are `_target_` configs (plain dicts in the checkpoint's
    hyper-parameters), so `load_from_checkpoint` rebuilds the same network. `optimizer` and
    `scheduler` are partials: called with the parameters / the optimizer.
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 8, 8),
        label_smoothing: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        net, optimizer, scheduler = to_plain(net), to_plain(optimizer), to_plain(scheduler)
        input_shape = list(to_plain(input_shape))
        lr = optimizer.get("lr")
        require(
            lr is None or float(lr) > 0,
            f"model.optimizer.lr={lr} is out of range: give a positive learning rate",
        )
        require(
            0.0 <= label_smoothing < 1.0,
            f"model.label_smoothing={label_smoothing} is out of range: give [0, 1)",
        )
        self.save_hyperparameters(
            {
                "net": net,
                "optimizer": optimizer,
                "scheduler": scheduler,
                "num_classes": num_classes,
                "input_shape": input_shape,
                "label_smoothing": label_smoothing,
                "compile": compile,
            },
            logger=False,
        )
        self.net: nn.Module = instantiate(net)
        self.example_input_array = torch.zeros(1, *input_shape)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_loss = MeanMetric()
        self.val_acc_best = MaxMetric()
        self.__dict__["_compiled"] = None  # not a submodule: keeps state_dict keys unchanged

    @override
    def net_changed(self) -> None:
        self.__dict__["_compiled"] = None

    @override
    def forward(self, x: Any) -> torch.Tensor:
        """The logits of `net` on `x` (a tensor, or a dict of tensors)."""
        net = self.net
        if self.hparams.compile and self.training:
            if self.__dict__["_compiled"] is None:
                self.__dict__["_compiled"] = torch.compile(self.net)
            net = self.__dict__["_compiled"]
        return logits_of(call_net(net, x))

    @override
    def on_train_start(self) -> None:
        self.val_acc_best.reset()

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        task_loss = self.criterion(logits, y)
        loss, parts = self.combine_loss(task_loss, batch, logits)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("train/task_loss", task_loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss(self.criterion(logits, y))
        self.val_acc(logits, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.test_acc(logits, y)
        self.log("test/loss", self.criterion(logits, y), on_epoch=True, sync_dist=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(self.hparams.optimizer)(params=params)
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = instantiate(self.hparams.scheduler)(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"},
        }
