"""The image-classification LightningModule: any `net` from config, trained with cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn
from typing_extensions import override

from slimlab.models.base import SlimModule, call_net, logits_of
from slimlab.models.epoch_means import EpochMeans
from slimlab.utils.errors import require
from slimlab.utils.plain import to_plain


class ImageClassifier(SlimModule):
    """Classifies images with `net`; logs loss, accuracy and the best validation accuracy.

    Metrics are epoch means over every sample (all processes under DDP), logged once per
    epoch from the epoch-end hooks: `train/loss`, `train/task_loss`, `train/acc`,
    `train/<loss term>`, `val/loss`, `val/acc`, `val/acc_best`, `test/loss`, `test/acc`.
    Steps only add to running sums on the device (`EpochMeans`): no per-step `self.log`.

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
        self.train_means = EpochMeans()  # summed per step, logged at the epoch's end
        self.val_means = EpochMeans()
        self.test_means = EpochMeans()
        self.val_acc_best: torch.Tensor | None = None  # this fit's best val/acc
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

    def _log_epoch(
        self, stage: str, means: EpochMeans, prog_bar: tuple[str, ...] = ()
    ) -> dict[str, torch.Tensor]:
        """Log `means` as `<stage>/<name>` (summed over processes first); return them."""
        values = means.compute(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
        means.reset()
        for name, value in values.items():
            # already global means: sync_dist=True only keeps Lightning's DDP warning away
            self.log(f"{stage}/{name}", value, prog_bar=name in prog_bar, sync_dist=True)
        return values

    @override
    def on_train_start(self) -> None:
        self.val_acc_best = None

    @override
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        task_loss = self.criterion(logits, y)
        loss, parts = self.combine_loss(task_loss, batch, logits)
        acc = (logits.detach().argmax(-1) == y).float().mean()
        self.train_means.update(len(y), loss=loss, task_loss=task_loss, acc=acc, **parts)
        return loss

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch("train", self.train_means, prog_bar=("loss",))

    @override
    def on_validation_epoch_start(self) -> None:
        self.val_means.reset()

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        acc = (logits.argmax(-1) == y).float().mean()
        self.val_means.update(len(y), loss=self.criterion(logits, y), acc=acc)

    @override
    def on_validation_epoch_end(self) -> None:
        values = self._log_epoch("val", self.val_means, prog_bar=("loss", "acc"))
        if self.trainer.sanity_checking or "acc" not in values:
            return
        best = self.val_acc_best
        self.val_acc_best = values["acc"] if best is None else torch.maximum(best, values["acc"])
        self.log("val/acc_best", self.val_acc_best, sync_dist=True, prog_bar=True)

    @override
    def on_test_epoch_start(self) -> None:
        self.test_means.reset()

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        acc = (logits.argmax(-1) == y).float().mean()
        self.test_means.update(len(y), loss=self.criterion(logits, y), acc=acc)

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch("test", self.test_means)

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
