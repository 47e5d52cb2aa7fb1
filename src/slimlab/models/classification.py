"""The shared base of SlimLab's classifiers (images, text): loss, metrics, steps, optimizers.

What happens when:

- construction: the hyper-parameters are validated and saved as plain data, `self.net` is
  built from its config, the loss and metrics are made; the subclass sets
  `self.example_input_array` (a tensor, or a dict of tensors, of the real dtypes).
- `setup`: the number of classes is checked against the DataModule's, before any step runs.
- every step: `split_batch` turns a batch into (inputs, target); the inputs go through
  `self(...)` (`call_net`: a tensor positionally, a dict as keyword arguments) and
  `logits_of` takes the logits from whatever the net returned; cross-entropy plus the loss
  terms compression added (`combine_loss`) is the training loss.
- logged once per epoch, from the epoch-end hooks (`EpochMeans`: steps only add to running
  sums on the device, no per-step `self.log`; means over every sample of all processes):
  train/loss, train/task_loss, train/acc (and train/<term> per loss term), val/loss,
  val/acc, val/acc_best, test/loss, test/acc.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn
from typing_extensions import override

from slimlab.models.base import SlimModule, call_net, logits_of
from slimlab.models.epoch_means import EpochMeans
from slimlab.utils.errors import require
from slimlab.utils.plain import to_plain

TARGET_KEY = "labels"  # where a dict batch holds its class labels (Hugging Face's name)


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, target) of a batch: an (x, y) pair, or a dict whose "labels" is the target
    and whose other entries are the net's keyword inputs."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != TARGET_KEY}, batch[TARGET_KEY]
    x, y = batch
    return x, y


class ClassificationModule(SlimModule):
    """Trains `self.net` with cross-entropy; logs loss, accuracy and the best val accuracy.

    `net`, `optimizer` and `scheduler` are `_target_` configs, saved as plain hyper-parameters
    with the others (and with `input_hparams`, what the subclass needs to describe its input,
    e.g. input_shape), so `load_from_checkpoint` rebuilds the same network. `optimizer` and
    `scheduler` are partials: called with the parameters / the optimizer. Subclasses set
    `self.example_input_array`.
    """

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None,
        num_classes: int,
        label_smoothing: float,
        compile: bool,
        **input_hparams: Any,
    ) -> None:
        super().__init__()
        net, optimizer, scheduler = to_plain(net), to_plain(optimizer), to_plain(scheduler)
        lr = optimizer.get("lr")
        require(
            lr is None or float(lr) > 0,
            f"model.optimizer.lr={lr} is out of range: give a positive learning rate",
        )
        require(
            isinstance(num_classes, int) and num_classes >= 2,
            f"model.num_classes={num_classes} is out of range: give 2 or more classes",
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
                **input_hparams,
                "label_smoothing": label_smoothing,
                "compile": compile,
            },
            logger=False,
        )
        self.net: nn.Module = instantiate(net)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.train_means = EpochMeans()  # summed per step, logged at the epoch's end
        self.val_means = EpochMeans()
        self.test_means = EpochMeans()
        self.val_acc_best: torch.Tensor | None = None  # this fit's best val/acc
        self.__dict__["_compiled"] = None  # not a submodule: keeps state_dict keys unchanged

    @override
    def net_changed(self) -> None:
        self.__dict__["_compiled"] = None

    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor]:
        """(inputs, target) of a batch (`split_batch`; a subclass may read other layouts)."""
        return split_batch(batch)

    @override
    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The logits `self.net` gives for these inputs (compiled for training if `compile`);
        one dict of named tensors is passed as keyword arguments, as `call_net` does."""
        if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
            args, kwargs = (), dict(args[0])
        net = self.net
        if self.hparams.get("compile") and self.training:
            if self.__dict__["_compiled"] is None:
                self.__dict__["_compiled"] = torch.compile(self.net)
            net = self.__dict__["_compiled"]
        return logits_of(net(*args, **kwargs))

    @override
    def setup(self, stage: str) -> None:
        data_classes = getattr(getattr(self.trainer, "datamodule", None), "num_classes", None)
        require(
            not data_classes or data_classes == self.hparams.num_classes,
            f"model.num_classes={self.hparams.num_classes} does not match the data's "
            f"{data_classes} classes: set model.num_classes={data_classes}",
        )

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
        inputs, y = self.split_batch(batch)
        logits = call_net(self, inputs)
        task_loss = self.criterion(logits, y)  # y may be soft labels (N, C): data.mix
        loss, parts = self.combine_loss(task_loss, batch, logits)
        label = y.argmax(-1) if y.is_floating_point() else y  # a mixed image: its larger share
        acc = (logits.detach().argmax(-1) == label).float().mean()
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
        inputs, y = self.split_batch(batch)
        logits = call_net(self, inputs)
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
        inputs, y = self.split_batch(batch)
        logits = call_net(self, inputs)
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
