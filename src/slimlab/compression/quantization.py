"""Quantization-aware training that ends in a real int8 model: the QAT callback and its restorer.

The callback's interface (backend, bits, the epochs below) says nothing about the library that
does the work: that is `slimlab.compression.pt2e` (torchao PT2E: torch.export, prepare_qat_pt2e,
convert_pt2e). The per-epoch switches come from `schedules.qat_train_state`.

Timeline of a run with `QuantizationAwareTraining(start_epoch=s, freeze_bn_epoch=b,
freeze_observer_epoch=o)`:

- `setup`: the strategy and the module's contract are checked, and the network must export for
  QAT (tried on a copy when s > 0), so errors come before training. Pruning, if configured,
  must be done before epoch s (`check_compression_order`, where callbacks are assembled).
- epochs < s train the plain fp32 network;
- at epoch s the fp32 network's validation accuracy is measured (the report's "before"), a CPU
  copy of it is kept, the network is exported (`torch.export`), conv-bn folded with simulated
  fusion and fake quantization inserted, and ``{"kind": "qat", "stage": "prepare", "stack":
  "pt2e"}`` is recorded. With s = 0 this happens in `setup`,
  before DDP wraps the model and the optimizer is built; later, the optimizer and scheduler are
  rebuilt (surviving parameters keep their moments), DDP is re-wrapped, and checkpoint and
  early-stopping callbacks forget their best (an fp32 checkpoint must not become the int8
  model). A resume replays the entry through `restore_quantization` before the weights load;
- from epoch s fake quantization and observers are on, from epoch b batch-norm statistics are
  frozen, from epoch o the int8 ranges; validation and test never move the ranges;
- `on_train_end`: the best QAT checkpoint's weights are converted to int8 (int8 weights,
  quantize/dequantize ops at the learned scales; converted on the CPU, then put back on the
  module's device: PyTorch runs it as reference int8 arithmetic, on any device), the module's
  `net` becomes the int8 network, ``{"kind": "qat", "stage": "convert", ...}`` is recorded
  with the activation scales (constants of the graph), and the int8 checkpoint is saved next
  to the best one and made the best, so `trainer.test(ckpt_path=best)` and `eval.py` test the
  int8 model. The report sets the fp32 network from before QAT against the int8 one
  (accuracy on the same validation data, params, MACs, size; latency of both exported to
  ONNX and run by onnxruntime, the int8 model's deployment). A second `fit` trains the QAT
  network again.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from typing_extensions import override

from slimlab.compression import measure
from slimlab.compression.callback import CompressionCallback, Stage, StructureWindow
from slimlab.compression.pt2e import (
    activation_qparams,
    check_backend,
    check_quantizable,
    convert_int8,
    observe_once,
    prepare_qat,
    set_activation_qparams,
    set_qat_state,
)
from slimlab.compression.schedules import QATState, qat_eval_state, qat_train_state
from slimlab.compression.structure_change import after_structure_change
from slimlab.models.base import SlimModule
from slimlab.utils.compat import set_best_checkpoint
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.logging import get_logger
from slimlab.utils.onnx import ExportFailed

log = get_logger(__name__)

KEY = "compression.qat"  # config key named in error messages
SUPPORTED_BITS = (8,)  # weights and activations
STACK = "pt2e"  # recorded in every structure entry: the library the entries replay with
FLOAT_TWIN = "_qat_float_twin"  # on the module: (CPU copy of the fp32 net, holds trained weights)


def keep_float_twin(module: SlimModule, trained: bool) -> None:
    """Keep a CPU copy of the fp32 `net` about to be prepared (the report's "before").

    `trained=False` when its weights are not the trained ones (a checkpoint is being restored:
    they load into the QAT network afterwards). Held outside the module's submodules, so
    state_dict keys do not change.
    """
    module.__dict__[FLOAT_TWIN] = (copy.deepcopy(module.net).cpu().eval(), trained)


def restore_quantization(module: SlimModule, entry: dict) -> None:
    """Replay a "qat" structure entry on a freshly built module (before its weights load).

    "prepare" exports and prepares the network again (the state dict keys are the same);
    "convert" converts the prepared network and puts in the activation scales the entry
    holds (the int8 weights and their scales come with the state dict).
    """
    if entry.get("stack") != STACK:
        raise ConfigError(
            "the checkpoint holds a QAT network of SlimLab's former torch.ao FX stack (its qat "
            f"entry has no stack={STACK!r}), which this version no longer loads: train it "
            "again (compression=qat), or open it with a SlimLab checkout from before the move "
            "to PT2E (docs/quantization.md)"
        )
    device = measure.device_of(module.net)
    example = measure.move_to(module.example_input_array, device)
    if entry["stage"] == "prepare":
        check_quantizable(module.net)
        keep_float_twin(module, trained=False)
        module.net = prepare_qat(module.net, example, entry["backend"])
    elif entry["stage"] == "convert":
        observe_once(module.net, example)  # finite ranges to convert with; the entry's apply
        converted = convert_int8(module.net)
        set_activation_qparams(converted, entry["activations"])
        module.net = converted.to(device)
    else:
        raise ConfigError(f"checkpoint qat entry has unknown stage={entry['stage']!r}")


def qat_stage(module: SlimModule) -> str | None:
    """The last QAT stage recorded on `module` ("prepare", "convert") or None."""
    stages = [e["stage"] for e in module.structure_log if e.get("kind") == "qat"]
    return stages[-1] if stages else None


def _apply(net: nn.Module, state: QATState) -> None:
    set_qat_state(net, state.fake_quant, state.observe, state.freeze_bn)


class QuantizationAwareTraining(CompressionCallback):
    """Train with fake int8 quantization from `start_epoch`, convert to int8 kernels at the end.

    Args:
        backend: the CPU the int8 model is made for: "x86" (also "fbgemm": 7-bit weights, which
            x86 CPUs without VNNI need) or "qnnpack" (ARM: full 8-bit weights).
        bits: weight and activation bits; 8 is the one supported.
        start_epoch: first epoch trained with fake quantization (earlier epochs train in float).
        freeze_bn_epoch: first epoch with frozen batch-norm statistics (None: never).
        freeze_observer_epoch: first epoch with frozen quantization ranges, after start_epoch
            (None: never).
        convert: at the end of fit, convert to the int8 model and make its checkpoint the
            tested one (False keeps the fake-quantized network, e.g. to test on a GPU).
        report: fp32 vs int8 accuracy, params, MACs, size and latency into
            `compression_report`: true, false, or {enabled, latency, repeats}.
    """

    key = KEY
    stage = Stage.QUANTIZE
    renames_layers = True  # the exported graph has no layer modules: layer hooks stop running

    def __init__(
        self,
        backend: str = "x86",
        bits: int = 8,
        start_epoch: int = 0,
        freeze_bn_epoch: int | None = None,
        freeze_observer_epoch: int | None = None,
        convert: bool = True,
        report: bool | Mapping[str, Any] = True,
    ) -> None:
        check_backend(backend)
        require(
            bits in SUPPORTED_BITS,
            f"{KEY}.bits={bits} is not supported: give 8 (int8 weights and activations; for "
            "4-bit weights see compression=bnb_weights)",
        )
        require(
            int(start_epoch) >= 0,
            f"{KEY}.start_epoch={start_epoch} is out of range: give an epoch >= 0",
        )
        require(
            freeze_bn_epoch is None or freeze_bn_epoch >= start_epoch,
            f"{KEY}.freeze_bn_epoch={freeze_bn_epoch} is before start_epoch={start_epoch}: give "
            "an epoch >= start_epoch, or null for never",
        )
        require(
            freeze_observer_epoch is None or freeze_observer_epoch > start_epoch,
            f"{KEY}.freeze_observer_epoch={freeze_observer_epoch} leaves no epoch to calibrate "
            f"after start_epoch={start_epoch}: give an epoch > start_epoch, or null",
        )
        self.backend = backend
        self.bits = int(bits)
        self.start_epoch = int(start_epoch)
        self.freeze_bn_epoch = freeze_bn_epoch
        self.freeze_observer_epoch = freeze_observer_epoch
        self.convert = convert
        self.report = measure.report_settings(report, KEY)
        self._prepared: nn.Module | None = None  # the QAT network behind the int8 one
        self._converted: nn.Module | None = None
        self._train_state_applied = False
        self._fp32_val_acc: float | None = None  # of the fp32 network when QAT started

    @override
    def structure_window(self) -> StructureWindow:
        return StructureWindow(self.start_epoch, None, f"{KEY}.start_epoch", "the int8 conversion")

    # -- when the network becomes the QAT network ------------------------------------------------
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        module = self.check_setup(trainer, pl_module)
        max_epochs = trainer.max_epochs
        if not trainer.fast_dev_run and max_epochs is not None and max_epochs >= 0:
            require(
                self.start_epoch < max_epochs,
                f"{KEY}.start_epoch={self.start_epoch} is not before trainer.max_epochs="
                f"{max_epochs}: QAT would never run; give start_epoch < max_epochs",
            )
        if qat_stage(module) == "convert":
            self._unconvert(module)
        if qat_stage(module) is None:
            check_quantizable(module.net)
            if self.start_epoch == 0:  # before DDP wraps the model and the optimizer is built
                self._prepare(module)
            else:  # fail now, not after the fp32 epochs: export a copy
                example = measure.move_to(module.example_input_array, module.device)
                prepare_qat(copy.deepcopy(module.net), example, self.backend)

    def _prepare(self, pl_module: SlimModule) -> None:
        example = measure.move_to(pl_module.example_input_array, pl_module.device)
        keep_float_twin(pl_module, trained=True)
        pl_module.net = prepare_qat(pl_module.net, example, self.backend)
        set_qat_state(pl_module.net, fake_quant=False, observe=False)
        pl_module.record_structure(self._entry("prepare"))
        pl_module.net_changed()
        log.info(f"QAT: exported and prepared model.net for int8 ({self.backend})")

    def _entry(self, stage: str, **extra: Any) -> dict:
        entry = {"kind": "qat", "stage": stage, "stack": STACK, "backend": self.backend}
        return {**entry, "bits": self.bits, **extra}

    def _unconvert(self, pl_module: SlimModule) -> None:
        """Bring back the QAT network of a finished QAT fit, so `fit` can run again."""
        if self._prepared is None or pl_module.net is not self._converted:
            raise ConfigError(
                "model.net is already the converted int8 network, which cannot train: resume from "
                "the run's last.ckpt (the QAT network) instead of the int8 checkpoint"
            )
        assert pl_module.structure_log[-1]["stage"] == "convert"
        pl_module.structure_log.pop()
        pl_module.net = self._prepared
        pl_module.net_changed()
        self._prepared = self._converted = None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if qat_stage(pl_module) == "convert":  # resumed from an int8 checkpoint
            raise ConfigError(
                f"ckpt_path={trainer.ckpt_path} holds the converted int8 network, which cannot "
                "train: resume from the run's last.ckpt (the QAT network)"
            )
        self._train_state_applied = False

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if qat_stage(pl_module) is None and epoch >= self.start_epoch:
            if self.report.enabled:
                self._fp32_val_acc = self._accuracy(trainer, pl_module, pl_module.net)
            self._prepare(pl_module)
            after_structure_change(trainer, pl_module, keep_optimizer_state=True)
            log.info(f"QAT: fake quantization starts at epoch {epoch}")
        if qat_stage(pl_module) == "prepare":
            self._apply_train_state(epoch, pl_module.net)

    def _accuracy(self, trainer: L.Trainer, pl_module: SlimModule, net: nn.Module) -> float | None:
        """Top-1 validation accuracy of `net` (summed over ranks; a collective)."""
        device = measure.device_of(net)
        counts = measure.loop_top1_counts(trainer, pl_module, net, trainer.val_dataloaders, device)
        correct, seen = measure.sum_over_ranks(trainer, counts, pl_module.device)
        return correct / seen if seen > 0 else None

    # -- the schedule -------------------------------------------------------------------------
    def _apply_train_state(self, epoch: int, net: nn.Module) -> None:
        state = qat_train_state(
            epoch, self.start_epoch, self.freeze_bn_epoch, self.freeze_observer_epoch
        )
        _apply(net, state)
        self._train_state_applied = True

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *_) -> None:
        if not self._train_state_applied and qat_stage(pl_module) == "prepare":
            self._apply_train_state(trainer.current_epoch, pl_module.net)

    def _eval_state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluation must not move the quantization ranges: observers off, quantization on."""
        if qat_stage(pl_module) != "prepare":
            return
        fitting = trainer.state.fn == "fit"
        _apply(pl_module.net, qat_eval_state(trainer.current_epoch, self.start_epoch, fitting))
        self._train_state_applied = False

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_state(trainer, pl_module)

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_state(trainer, pl_module)

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_state(trainer, pl_module)

    # -- the end of fit: convert -----------------------------------------------------------------
    @override
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
        converted = convert_int8(prepared).to(pl_module.device)
        pl_module.net = converted
        qparams = activation_qparams(converted)
        pl_module.record_structure(self._entry("convert", activations=qparams))
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
                set_best_checkpoint(cb, str(path))
            log.info(f"QAT: saved the int8 model to {path} (now the best checkpoint)")
        if self.report.enabled:
            self._report(trainer, pl_module, converted)

    def _report(self, trainer: L.Trainer, pl_module: SlimModule, converted: nn.Module) -> None:
        """The fp32 network from before QAT vs the int8 one: validation accuracy (both measured
        by `measure.top1_counts` on the same data), params, MACs, size and CPU latency."""
        twin, trained = pl_module.__dict__.get(FLOAT_TWIN, (None, False))
        cpu, loaders = torch.device("cpu"), trainer.val_dataloaders
        fp32_counts = (0, 0)
        if self._fp32_val_acc is None and twin is not None and trained:  # QAT began in setup
            fp32_counts = measure.loop_top1_counts(trainer, pl_module, twin, loaders, cpu)
        device = measure.device_of(converted)
        int8_counts = measure.loop_top1_counts(trainer, pl_module, converted, loaders, device)
        totals = measure.sum_over_ranks(trainer, [*fp32_counts, *int8_counts], pl_module.device)
        if not trainer.is_global_zero:
            return
        fp32_acc = self._fp32_val_acc
        if fp32_acc is None and totals[1] > 0:
            fp32_acc = totals[0] / totals[1]
        example = pl_module.example_input_array
        before, after, runtime = self._measure(twin, converted, example)
        if fp32_acc is not None and totals[3] > 0:
            before["val_acc"], after["val_acc"] = fp32_acc, totals[2] / totals[3]
        elif twin is not None and not trained:
            log.info(
                "QAT report: no fp32 validation accuracy (QAT began in setup of the run this "
                "one resumed): the report leaves val_acc out rather than guess it"
            )
        method = f"qat int{self.bits} ({self.backend}, torchao PT2E)"
        section = {"method": method, **measure.compare(before, after)}
        if runtime is not None:
            section["latency_runtime"] = runtime
        if "val_acc" in before:
            section["val_acc_change"] = after["val_acc"] - before["val_acc"]
        measure.add_section(pl_module, "quantization", section)
        log.info(f"QAT report: {section}")

    def _measure(
        self, twin: nn.Module | None, converted: nn.Module, example: Any
    ) -> tuple[dict, dict, str | None]:
        """(before, after, latency runtime): both networks measured alike; latency of both
        exported to ONNX and run by onnxruntime (PyTorch runs the int8 graph as reference
        quantize/dequantize ops, which says nothing about int8 speed). Without onnxruntime or
        where the network does not export, latency is left out, saying why."""
        runtime = "onnxruntime" if self.report.latency else None
        try:
            after = measure.measure_as(converted, example, self.report, runtime or "torch")
            before = (
                measure.measure_as(twin, example, self.report, runtime or "torch")
                if twin is not None
                else {}
            )
        except (ConfigError, ExportFailed) as exc:
            log.warning(f"QAT report: no latency ({exc})")
            settings = dataclasses.replace(self.report, latency=False)
            after = measure.measure_as(converted, example, settings)
            before = measure.measure_as(twin, example, settings) if twin is not None else {}
            runtime = None
        return before, after, runtime

    # -- state --------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"fp32_val_acc": self._fp32_val_acc}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._fp32_val_acc = state_dict.get("fp32_val_acc")
