"""Quantization-aware training that ends in a real int8 model: the QAT callback and its restorer.

The callback's interface (backend, bits, the epochs below) says nothing about the library that
does the work. The work is done by four "stack" functions at the top of this file, written for
torch.ao.quantization's FX graph mode (docs/quantization.md says why): swap those to change stack.

Timeline of a run with `QuantizationAwareTraining(start_epoch=s, freeze_bn_epoch=b,
freeze_observer_epoch=o)`:

- epochs < s train the plain fp32 network (pruning, if configured, must be done by then);
- at epoch s the network is traced, conv/bn/relu fused and fake quantization inserted, and
  ``{"kind": "qat", "stage": "prepare"}`` is recorded. With s = 0 this happens in `setup`,
  before DDP wraps the model and the optimizer is built; later, the optimizer and scheduler
  are rebuilt (surviving parameters keep their moments), DDP is re-wrapped, and checkpoint and
  early-stopping callbacks forget their best (an fp32 checkpoint must not become the int8
  model). A resume replays the entry through `restore_quantization` before the weights load;
- from epoch s fake quantization and observers are on, from epoch b batch-norm statistics are
  frozen, from epoch o the int8 ranges; validation and test never move the ranges;
- `on_train_end`: the best QAT checkpoint's weights are converted to int8 kernels, the module's
  `net` becomes the int8 network, ``{"kind": "qat", "stage": "convert"}`` is recorded, and the
  int8 checkpoint is saved next to the best one and made the best, so `trainer.test(ckpt_path=
  best)` and `eval.py` test the int8 model. A second `fit` trains the QAT network again.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from slimlab.compression.pruning import StructuredPruning
from slimlab.compression.rewire import forget_best, rebuild_optimizers, rewrap_ddp
from slimlab.models.base import SlimModule
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.logging import get_logger

log = get_logger(__name__)

BACKENDS = ("x86", "fbgemm", "qnnpack")  # quantized CPU engines the int8 model can run on
SUPPORTED_BITS = (8,)  # weights and activations
QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# -- the stack: torch.ao.quantization, FX graph mode -------------------------------------------
def _qconfig_mapping(backend: str) -> Any:
    """Per-channel symmetric int8 weights, per-tensor affine uint8 activations."""
    from torch.ao.quantization import QConfig, get_default_qat_qconfig_mapping
    from torch.ao.quantization.fake_quantize import FusedMovingAvgObsFakeQuantize
    from torch.ao.quantization.observer import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )

    activation = FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAverageMinMaxObserver,
        quant_min=0,
        quant_max=255,
        dtype=torch.quint8,
        # fbgemm/x86 kernels use 7-bit activations to avoid int16 overflow without VNNI
        reduce_range=backend in ("x86", "fbgemm"),
    )
    weight = FusedMovingAvgObsFakeQuantize.with_args(
        observer=MovingAveragePerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
    )
    # the backend's mapping keeps its fixed-range settings for sigmoid, tanh, softmax, ...
    return get_default_qat_qconfig_mapping(backend).set_global(QConfig(activation, weight))


def prepare_qat(net: nn.Module, example_input: torch.Tensor, backend: str) -> nn.Module:
    """Trace `net`, fuse conv/bn/relu and insert fake quantization (shares `net`'s weights)."""
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    use_engine(backend)
    was_training = net.training
    try:
        prepared = prepare_qat_fx(net.train(), _qconfig_mapping(backend), (example_input,))
    except Exception as exc:  # torch.fx raises many types for untraceable Python
        raise ConfigError(
            f"model.net ({type(net).__name__}) cannot be traced by torch.fx for QAT: {exc}. "
            "Make its forward free of data-dependent Python control flow"
        ) from exc
    return prepared.train(was_training)


def set_qat_state(
    net: nn.Module, fake_quant: bool, observe: bool, freeze_bn: bool | None = None
) -> None:
    """Switch fake quantization, observers and (unless None) batch-norm statistics updates.

    Only call it with `freeze_bn` while training: unfreezing puts the fused batch norms in
    training mode.
    """
    from torch.ao.nn.intrinsic import qat as nniqat
    from torch.ao.quantization import (
        disable_fake_quant,
        disable_observer,
        enable_fake_quant,
        enable_observer,
    )

    net.apply(enable_fake_quant if fake_quant else disable_fake_quant)
    net.apply(enable_observer if observe else disable_observer)
    if freeze_bn is not None:
        net.apply(nniqat.freeze_bn_stats if freeze_bn else nniqat.update_bn_stats)


def convert_int8(net: nn.Module, backend: str) -> nn.Module:
    """A CPU int8 copy of the QAT-prepared `net` (the prepared network is left as it was)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    use_engine(backend)
    return convert_fx(copy.deepcopy(net).cpu().eval())


# -- checks and the restorer --------------------------------------------------------------------
def use_engine(backend: str, key: str = "compression.qat.backend") -> None:
    """Check `backend` and make it torch's quantized engine (int8 kernels pack per engine)."""
    require(
        backend in BACKENDS,
        f"{key}={backend!r} is not a supported backend: give one of {list(BACKENDS)}",
    )
    engines = torch.backends.quantized.supported_engines
    require(
        backend in engines,
        f"{key}={backend!r} is not built into this torch: it supports {engines}",
    )
    if torch.backends.quantized.engine != backend:
        torch.backends.quantized.engine = backend


def check_quantizable(net: nn.Module) -> None:
    """Fail clearly when `net` has no Conv or Linear layer for QAT to quantize."""
    require(
        any(isinstance(m, QUANTIZABLE) for m in net.modules()),
        f"model.net ({type(net).__name__}) has no quantizable layer (Conv1d/2d/3d or Linear): "
        "QAT has nothing to quantize; remove compression.qat or use a network with such layers",
    )


FLOAT_TWIN = "_qat_float_twin"


def keep_float_twin(module: SlimModule) -> None:
    """Keep a CPU copy of the float `net` about to be prepared (size and latency "before").

    Held outside the module's submodules, so state_dict keys do not change.
    """
    module.__dict__[FLOAT_TWIN] = copy.deepcopy(module.net).cpu().eval()


def restore_quantization(module: SlimModule, entry: dict) -> None:
    """Replay a "qat" structure entry on a freshly built module (before its weights load)."""
    backend = entry["backend"]
    if entry["stage"] == "prepare":
        check_quantizable(module.net)
        keep_float_twin(module)
        module.net = prepare_qat(module.net, module.example_input_array, backend)
    elif entry["stage"] == "convert":
        module.net = convert_int8(module.net, backend)
    else:
        raise ConfigError(f"checkpoint qat entry has unknown stage={entry['stage']!r}")


def qat_stage(module: SlimModule) -> str | None:
    """The last QAT stage recorded on `module` ("prepare", "convert") or None."""
    stages = [e["stage"] for e in module.structure_log if e.get("kind") == "qat"]
    return stages[-1] if stages else None


@torch.no_grad()
def top1_accuracy(net: nn.Module, dataloaders: Any, device: torch.device) -> tuple[int, int]:
    """(correct, seen) of `net` over (inputs, class-index targets) batches; (0, 0) otherwise."""
    loaders = dataloaders if isinstance(dataloaders, list | tuple) else [dataloaders]
    correct = seen = 0
    was_training = net.training
    net.eval()
    for loader in loaders:
        for batch in loader or []:
            if not (isinstance(batch, list | tuple) and len(batch) >= 2):
                return 0, 0
            x, y = batch[0].to(device), batch[1].to(device)
            if y.dtype not in (torch.int64, torch.int32) or y.ndim != 1:
                return 0, 0
            correct += int((net(x).argmax(dim=1) == y).sum())
            seen += int(y.numel())
    net.train(was_training)
    return correct, seen


# -- the callback -------------------------------------------------------------------------------
class QuantizationAwareTraining(L.Callback):
    """Train with fake int8 quantization from `start_epoch`, convert to int8 kernels at the end.

    Args:
        backend: the quantized CPU engine the int8 model runs on: "x86" (also "fbgemm") for x86
            servers and desktops, "qnnpack" for ARM/mobile.
        bits: weight and activation bits; 8 is the one supported.
        start_epoch: first epoch trained with fake quantization (earlier epochs train in float).
        freeze_bn_epoch: first epoch with frozen batch-norm statistics (None: never).
        freeze_observer_epoch: first epoch with frozen quantization ranges, after start_epoch
            (None: never).
        convert: at the end of fit, convert to the int8 model and make its checkpoint the
            tested one (False keeps the fake-quantized network, e.g. to test on a GPU).
        report: measure fp32 vs int8 accuracy, size and latency into `compression_report`.
    """

    def __init__(
        self,
        backend: str = "x86",
        bits: int = 8,
        start_epoch: int = 0,
        freeze_bn_epoch: int | None = None,
        freeze_observer_epoch: int | None = None,
        convert: bool = True,
        report: bool = True,
    ) -> None:
        use_engine(backend)
        require(
            bits in SUPPORTED_BITS,
            f"compression.qat.bits={bits} is not supported: give 8 (int8 weights and "
            "activations; for 4-bit weights see slimlab.compression.bnb)",
        )
        require(
            int(start_epoch) >= 0,
            f"compression.qat.start_epoch={start_epoch} is out of range: give an epoch >= 0",
        )
        require(
            freeze_bn_epoch is None or freeze_bn_epoch >= start_epoch,
            f"compression.qat.freeze_bn_epoch={freeze_bn_epoch} is before start_epoch="
            f"{start_epoch}: give an epoch >= start_epoch, or null for never",
        )
        require(
            freeze_observer_epoch is None or freeze_observer_epoch > start_epoch,
            f"compression.qat.freeze_observer_epoch={freeze_observer_epoch} leaves no epoch to "
            f"calibrate after start_epoch={start_epoch}: give an epoch > start_epoch, or null",
        )
        self.backend = backend
        self.bits = int(bits)
        self.start_epoch = int(start_epoch)
        self.freeze_bn_epoch = freeze_bn_epoch
        self.freeze_observer_epoch = freeze_observer_epoch
        self.convert = convert
        self.report = report
        self._prepared: nn.Module | None = None  # the QAT network behind the int8 one
        self._converted: nn.Module | None = None
        self._train_state_applied = False

    # -- when the network becomes the QAT network ------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        require(
            isinstance(pl_module, SlimModule),
            f"compression.qat needs a slimlab.models.SlimModule, got {type(pl_module).__name__}",
        )
        max_epochs = trainer.max_epochs
        if not trainer.fast_dev_run and max_epochs is not None and max_epochs >= 0:
            require(
                self.start_epoch < max_epochs,
                f"compression.qat.start_epoch={self.start_epoch} is not before trainer.max_epochs"
                f"={max_epochs}: QAT would never run; give start_epoch < max_epochs",
            )
        self._check_after_pruning(trainer)
        use_engine(self.backend)
        if qat_stage(pl_module) == "convert":
            self._unconvert(pl_module)
        if qat_stage(pl_module) is None:
            check_quantizable(pl_module.net)
            if self.start_epoch == 0:  # before DDP wraps the model and the optimizer is built
                self._prepare(pl_module)

    def _check_after_pruning(self, trainer: L.Trainer) -> None:
        """QAT quantizes the final structure: every pruning step must come before start_epoch."""
        for cb in trainer.callbacks:
            if isinstance(cb, StructuredPruning):
                span = cb.end_epoch - cb.start_epoch
                last = cb.start_epoch + ((cb.steps - 1) * span) // cb.steps
                require(
                    self.start_epoch > last,
                    f"compression.qat.start_epoch={self.start_epoch} is not after the last "
                    f"pruning step (epoch {last}): give compression.qat.start_epoch >= {last + 1}",
                )

    def _prepare(self, pl_module: SlimModule) -> None:
        example = pl_module.example_input_array.to(pl_module.device)
        keep_float_twin(pl_module)
        pl_module.net = prepare_qat(pl_module.net, example, self.backend)
        set_qat_state(pl_module.net, fake_quant=False, observe=False)
        pl_module.record_structure(self._entry("prepare"))
        pl_module.net_changed()
        log.info(f"QAT: fused and prepared model.net for the {self.backend} int8 backend")

    def _entry(self, stage: str) -> dict:
        return {"kind": "qat", "stage": stage, "backend": self.backend, "bits": self.bits}

    def _unconvert(self, pl_module: SlimModule) -> None:
        """Bring back the QAT network of a finished QAT fit, so `fit` can run again."""
        if self._prepared is None or pl_module.net is not self._converted:
            raise ConfigError(
                "model.net is already the converted int8 network, which cannot train: resume from "
                "the run's last.ckpt (the QAT network) instead of the int8 checkpoint"
            )
        assert pl_module.structure_log[-1] == self._entry("convert")
        pl_module.structure_log.pop()
        pl_module.net = self._prepared
        pl_module.net_changed()
        self._prepared = self._converted = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if qat_stage(pl_module) == "convert":  # resumed from an int8 checkpoint
            raise ConfigError(
                f"ckpt_path={trainer.ckpt_path} holds the converted int8 network, which cannot "
                "train: resume from the run's last.ckpt (the QAT network)"
            )
        self._train_state_applied = False

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if qat_stage(pl_module) is None and epoch >= self.start_epoch:
            self._prepare(pl_module)
            rewrap_ddp(trainer, pl_module)
            rebuild_optimizers(trainer, keep_state=True)
            forget_best(trainer)  # an fp32 checkpoint must not become the int8 model
            log.info(f"QAT: fake quantization starts at epoch {epoch}")
        if qat_stage(pl_module) == "prepare":
            self._apply_train_state(epoch, pl_module.net)

    # -- the schedule -------------------------------------------------------------------------
    def _apply_train_state(self, epoch: int, net: nn.Module) -> None:
        active = epoch >= self.start_epoch
        observe = active and (
            self.freeze_observer_epoch is None or epoch < self.freeze_observer_epoch
        )
        freeze_bn = self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch
        set_qat_state(net, fake_quant=active, observe=observe, freeze_bn=freeze_bn)
        self._train_state_applied = True

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        if not self._train_state_applied and qat_stage(pl_module) == "prepare":
            self._apply_train_state(trainer.current_epoch, pl_module.net)

    def _eval_state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluation must not move the quantization ranges: observers off, quantization on."""
        if qat_stage(pl_module) != "prepare":
            return
        active = trainer.current_epoch >= self.start_epoch or trainer.state.fn != "fit"
        set_qat_state(pl_module.net, fake_quant=active, observe=False)
        self._train_state_applied = False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_state(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_state(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_state(trainer, pl_module)

    # -- the end of fit: convert -----------------------------------------------------------------
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.convert or qat_stage(pl_module) != "prepare":
            return
        checkpoints = [
            cb
            for cb in trainer.callbacks
            if isinstance(cb, ModelCheckpoint) and cb.monitor is not None
        ]
        best = next((cb.best_model_path for cb in checkpoints if cb.best_model_path), "")
        saved: dict | None = None
        if best and Path(best).is_file():
            saved = torch.load(best, map_location="cpu", weights_only=True)
            pl_module.load_state_dict(saved["state_dict"])
            log.info(f"QAT: converting the best QAT checkpoint {best} to int8")
        prepared = pl_module.net
        set_qat_state(prepared, fake_quant=True, observe=False, freeze_bn=True)
        converted = convert_int8(prepared, self.backend)
        pl_module.net = converted
        pl_module.record_structure(self._entry("convert"))
        pl_module.net_changed()
        self._prepared, self._converted = prepared, converted

        if trainer.fast_dev_run:
            log.info("QAT: converted to int8 (fast_dev_run: no checkpoint written)")
        elif saved is None:
            path = Path(trainer.default_root_dir) / "checkpoints" / "int8.ckpt"
            trainer.save_checkpoint(path, weights_only=True)
            log.info(f"QAT: saved the int8 model to {path}")
        else:  # the best checkpoint's epoch, step and loops, with the int8 weights
            path = Path(best).with_name(f"{Path(best).stem}-int8.ckpt")
            for key in ("optimizer_states", "lr_schedulers"):
                saved.pop(key, None)
            saved["state_dict"] = pl_module.state_dict()
            pl_module.on_save_checkpoint(saved)
            trainer.strategy.save_checkpoint(saved, path)
            trainer.strategy.barrier("qat_int8_checkpoint")
            for cb in checkpoints:
                cb.best_model_path = str(path)
            log.info(f"QAT: saved the int8 model to {path} (now the best checkpoint)")
        if self.report:
            self._report(trainer, pl_module, prepared, converted)

    def _report(
        self,
        trainer: L.Trainer,
        pl_module: SlimModule,
        prepared: nn.Module,
        converted: nn.Module,
    ) -> None:
        """fp32 (before) vs int8 (after): validation accuracy of the same trained weights,
        params, MACs, size on disk and one-thread CPU latency."""
        from slimlab.compression import report as measure_lib

        loaders = trainer.val_dataloaders
        # fp32 accuracy: the same trained weights with quantization switched off
        set_qat_state(prepared, fake_quant=False, observe=False, freeze_bn=True)
        counts = [
            *top1_accuracy(prepared, loaders, pl_module.device),
            *top1_accuracy(converted, loaders, torch.device("cpu")),
        ]
        set_qat_state(prepared, fake_quant=True, observe=False, freeze_bn=True)
        totals = trainer.strategy.reduce(
            torch.tensor(counts, dtype=torch.float64, device=pl_module.device), reduce_op="sum"
        ).tolist()
        if not trainer.is_global_zero:
            return
        example = pl_module.example_input_array.cpu()
        float_net = pl_module.__dict__.get(FLOAT_TWIN, prepared)
        before = measure_lib.measure(float_net, example)
        after = measure_lib.measure(converted, example)
        if totals[1] > 0:
            before["val_acc"] = totals[0] / totals[1]
            after["val_acc"] = totals[2] / totals[3]
        section = {
            "method": f"qat int{self.bits} ({self.backend})",
            **measure_lib.compare(before, after),
        }
        if totals[1] > 0:
            section["val_acc_change"] = after["val_acc"] - before["val_acc"]
        measure_lib.add_section(pl_module, "quantization", section)
        log.info(f"QAT report: {section}")
