"""bitsandbytes post-training 8-bit / 4-bit (NF4, FP4) linear weights: `compression=bnb_weights`.

bitsandbytes is optional (`pip install -e ".[bnb]"`) and slow to import (~5 s), so it is
imported only inside the functions that need it. (8-bit optimizers are an optimizer choice:
`slimlab.optim.bnb`.)

- `quantize_linear_weights(net, mode)`: swap every `nn.Linear` of `net` for an int8 or 4-bit
  bitsandbytes layer, for inference (weights frozen).
- `BitsAndBytesWeights`, timeline: `setup` checks the strategy and the module's contract
  (before training, in train.py); when testing starts it measures the network, swaps its
  linear layers, records ``{"kind": "bnb", ...}`` in the checkpointed structure log (replayed
  by `restore_bnb`, so a checkpoint saved afterwards reloads quantized), writes the quantized
  network as `<tested checkpoint>-<mode>.ckpt` (what eval.py then loads) and reports test
  accuracy, params, MACs, size and latency before vs after. Use it from train.py
  (`compression=bnb_weights`) or eval.py (`+callbacks.bnb._target_=slimlab.compression.
  bnb_weights.BitsAndBytesWeights +callbacks.bnb.mode=nf4`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from torch import nn
from typing_extensions import override

from slimlab.compression import measure
from slimlab.compression.callback import CompressionCallback, Stage
from slimlab.models.base import SlimModule
from slimlab.utils.errors import require
from slimlab.utils.logging import get_logger
from slimlab.utils.optional import import_optional

log = get_logger(__name__)

KEY = "compression.bnb_weights"  # config key named in error messages
MODES = ("int8", "nf4", "fp4")  # LLM.int8() weights, 4-bit NormalFloat, 4-bit float


def _load_4bit_state(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    """Rebuild a Linear4bit's packed weight and its quantization state from a state dict."""
    bnb = import_optional("bitsandbytes", "bnb")
    stats_prefix = prefix + "weight."
    stats = {
        k[len(stats_prefix) :]: v for k, v in state_dict.items() if k.startswith(stats_prefix)
    }
    if not stats:
        return
    for key in stats:
        state_dict.pop(stats_prefix + key)
    module.weight = bnb.nn.Params4bit.from_prequantized(
        data=state_dict[prefix + "weight"],
        quantized_stats=stats,
        requires_grad=False,
        device=module.weight.device,
    )


def _bnb_linear(linear: nn.Linear, mode: str) -> nn.Module:
    """A bitsandbytes layer holding `linear`'s weights, quantized on `linear`'s device."""
    bnb = import_optional("bitsandbytes", "bnb")
    # bitsandbytes quantizes Int8Params / Params4bit when they move from the CPU to a device:
    # built from a CUDA weight, they would stay float on the GPU (a CPU copy first)
    device, weight = linear.weight.device, linear.weight.data.detach().cpu().clone()
    has_bias = linear.bias is not None
    if mode == "int8":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=has_bias, has_fp16_weights=False
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            compute_dtype=weight.dtype,
            quant_type=mode,
        )
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=mode)
        # bitsandbytes 0.50's AVX512-BF16 CPU kernel needs 32 | out_features and
        # blocksize | in_features (e.g. a 32-wide transformer's 32 -> 96 qkv fails it)
        if linear.out_features % 32 or linear.in_features % layer.weight.blocksize:
            layer.support_avx512bf16_for_cpu = False
        layer.register_load_state_dict_pre_hook(_load_4bit_state)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.detach().clone(), requires_grad=False)
    return layer.to(device)  # moving to a device is what quantizes the weight


def check_mode(mode: str, key: str = f"{KEY}.mode") -> None:
    """Fail clearly on a weight-quantization mode bitsandbytes does not offer."""
    require(mode in MODES, f"{key}={mode!r} is not supported: give one of {list(MODES)}")


def quantize_linear_weights(
    net: nn.Module, mode: str = "nf4", names: list[str] | None = None, skip: tuple = ()
) -> list[str]:
    """Swap `net`'s nn.Linear layers (all, or those in `names`, minus `skip`) for bitsandbytes
    int8/NF4/FP4 layers in place; return the swapped layers' names. Inference only."""
    check_mode(mode)
    bnb = import_optional("bitsandbytes", "bnb")
    done = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    chosen = [
        name
        for name, m in net.named_modules()
        if isinstance(m, nn.Linear)
        and not isinstance(m, done)
        and name not in skip
        and (names is None or name in names)
    ]
    for name in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        setattr(parent, attr, _bnb_linear(getattr(parent, attr), mode))
    return chosen


def restore_bnb(module: SlimModule, entry: dict) -> None:
    """Replay a "bnb" structure entry on a freshly built module (before its weights load)."""
    quantize_linear_weights(module.net, entry["mode"], names=list(entry["modules"]))


class BitsAndBytesWeights(CompressionCallback):
    """Quantize the network's linear weights with bitsandbytes when testing starts.

    Args:
        mode: "int8" (LLM.int8() 8-bit weights), "nf4" or "fp4" (4-bit weights, float compute).
        skip: names of linear layers to keep in full precision (e.g. ["classifier"]).
        report: test accuracy, params, MACs, size and latency before vs after into
            `compression_report`: true, false, or {enabled, latency, repeats}.
    """

    key = KEY
    stage = Stage.QUANTIZE

    def __init__(
        self,
        mode: str = "nf4",
        skip: list[str] | None = None,
        report: bool | Mapping[str, Any] = True,
    ) -> None:
        check_mode(mode)
        self.mode = mode
        self.skip = tuple(skip or ())
        self.report = measure.report_settings(report, KEY)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module = self.check_setup(trainer, pl_module)
        if not any(e.get("kind") == "bnb" for e in module.structure_log):
            require(
                any(
                    isinstance(m, nn.Linear) and name not in self.skip
                    for name, m in module.net.named_modules()
                ),
                f"model.net ({type(module.net).__name__}) has no nn.Linear layer for "
                f"bitsandbytes to quantize ({KEY}.skip may list them all)",
            )

    def _save_quantized(self, trainer: L.Trainer) -> Path | None:
        """Write the quantized network as `<tested checkpoint>-<mode>.ckpt` beside the tested
        checkpoint (`checkpoints/<mode>.ckpt` when none was loaded), weights only; `load_module`
        and eval.py reload it quantized (the structure log replays the swap). An existing file
        is kept."""
        if trainer.fast_dev_run:
            return None
        tested = trainer.ckpt_path
        if tested:
            path = Path(tested).with_name(f"{Path(tested).stem}-{self.mode}.ckpt")
        else:
            path = Path(trainer.default_root_dir) / "checkpoints" / f"{self.mode}.ckpt"
        if path.exists():
            log.info(f"bitsandbytes: {path} exists, kept as it is")
            return path
        trainer.save_checkpoint(path, weights_only=True)
        log.info(f"bitsandbytes: saved the {self.mode} model to {path} (eval.py reloads it)")
        return path

    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, SlimModule)
        if any(e.get("kind") == "bnb" for e in pl_module.structure_log):
            return  # already quantized (loaded from a quantized checkpoint)
        net, example, device = pl_module.net, pl_module.example_input_array, pl_module.device
        loaders = trainer.test_dataloaders
        before: dict[str, Any] = {}
        counts = [0, 0]
        if self.report.enabled:
            before = measure.measure_as(net, example, self.report)
            counts = list(measure.loop_top1_counts(trainer, pl_module, net, loaders, device))
        names = quantize_linear_weights(net, self.mode, skip=self.skip)
        pl_module.record_structure({"kind": "bnb", "mode": self.mode, "modules": names})
        pl_module.net_changed()
        log.info(f"bitsandbytes: {len(names)} linear layers now hold {self.mode} weights")
        saved = self._save_quantized(trainer)
        if not self.report.enabled:
            return
        counts += measure.loop_top1_counts(trainer, pl_module, net, loaders, device)
        after = measure.measure_as(net, example, self.report)
        totals = measure.sum_over_ranks(trainer, counts, device)
        if totals[1] > 0 and totals[3] > 0:
            before["test_acc"] = totals[0] / totals[1]
            after["test_acc"] = totals[2] / totals[3]
        section = {
            "method": f"bitsandbytes {self.mode} linear weights",
            "layers": names,
            "checkpoint": str(saved) if saved else None,
            **measure.compare(before, after),
        }
        if "test_acc" in before:
            section["test_acc_change"] = after["test_acc"] - before["test_acc"]
        measure.add_section(pl_module, "bnb_weights", section)
        log.info(f"bitsandbytes report: {section}")
