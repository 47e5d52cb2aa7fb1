"""bitsandbytes: 8-bit optimizers and post-training 8-bit / 4-bit (NF4, FP4) linear weights.

bitsandbytes is optional (`pip install -e ".[bnb]"`) and slow to import (~5 s), so it is
imported only inside the functions that need it.

- `bnb_optimizer`: the target of `optimizer=adamw8bit|lion8bit|paged_adamw8bit` (a partial
  called with the parameters, like every optimizer config).
- `quantize_linear_weights(net, mode)`: swap every `nn.Linear` of `net` for an int8 or 4-bit
  bitsandbytes layer, for inference (weights frozen).
- `BitsAndBytesWeights`: a callback that does the swap when testing starts, records it in the
  checkpointed structure log (replayed by `restore_bnb`), and reports the memory and accuracy
  change. Use it from train.py (`compression=bnb_weights`) or eval.py
  (`+callbacks.bnb._target_=slimlab.compression.bnb.BitsAndBytesWeights +callbacks.bnb.mode=nf4`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from slimlab.models.base import SlimModule
from slimlab.utils.errors import require
from slimlab.utils.logging import get_logger

log = get_logger(__name__)

MODES = ("int8", "nf4", "fp4")  # LLM.int8() weights, 4-bit NormalFloat, 4-bit float
OPTIMIZERS = ("AdamW8bit", "Adam8bit", "Lion8bit", "PagedAdamW8bit", "PagedLion8bit", "SGD8bit")


def import_bnb() -> Any:
    """Import bitsandbytes, or fail saying which extra installs it."""
    try:
        import bitsandbytes
    except ImportError as exc:
        raise ImportError(
            'bitsandbytes is not installed: pip install -e ".[bnb]" (or pip install bitsandbytes)'
        ) from exc
    return bitsandbytes


def bnb_optimizer(params: Any, name: str = "AdamW8bit", **kwargs: Any) -> torch.optim.Optimizer:
    """A bitsandbytes 8-bit optimizer `name` over `params` (kwargs: lr, weight_decay, ...)."""
    require(
        name in OPTIMIZERS,
        f"model.optimizer.name={name!r} is not a bitsandbytes 8-bit optimizer: give one of "
        f"{list(OPTIMIZERS)}",
    )
    return getattr(import_bnb().optim, name)(params, **kwargs)


# -- weight quantization -------------------------------------------------------------------------
def _load_4bit_state(module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
    """Rebuild a Linear4bit's packed weight and its quantization state from a state dict."""
    bnb = import_bnb()
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
    bnb = import_bnb()
    device, weight = linear.weight.device, linear.weight.data.detach().clone()
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
        if linear.out_features % 32:  # bitsandbytes 0.50's AVX512-BF16 CPU kernel needs 32 | N
            layer.support_avx512bf16_for_cpu = False
        layer.register_load_state_dict_pre_hook(_load_4bit_state)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.detach().clone(), requires_grad=False)
    return layer.to(device)  # moving to a device is what quantizes the weight


def check_mode(mode: str, key: str = "compression.bnb_weights.mode") -> None:
    """Fail clearly on a weight-quantization mode bitsandbytes does not offer."""
    require(mode in MODES, f"{key}={mode!r} is not supported: give one of {list(MODES)}")


def quantize_linear_weights(
    net: nn.Module, mode: str = "nf4", names: list[str] | None = None, skip: tuple = ()
) -> list[str]:
    """Swap `net`'s nn.Linear layers (all, or those in `names`, minus `skip`) for bitsandbytes
    int8/NF4/FP4 layers in place; return the swapped layers' names. Inference only."""
    check_mode(mode)
    bnb = import_bnb()
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


class BitsAndBytesWeights(L.Callback):
    """Quantize the network's linear weights with bitsandbytes when testing starts.

    Args:
        mode: "int8" (LLM.int8() 8-bit weights), "nf4" or "fp4" (4-bit weights, float compute).
        skip: names of linear layers to keep in full precision (e.g. ["classifier"]).
        report: measure size and accuracy before and after into `compression_report`.
    """

    def __init__(self, mode: str = "nf4", skip: list[str] | None = None, report: bool = True):
        check_mode(mode)
        self.mode = mode
        self.skip = tuple(skip or ())
        self.report = report

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from slimlab.compression.quantization import top1_accuracy
        from slimlab.compression.report import add_section, compare, size_on_disk

        require(
            isinstance(pl_module, SlimModule),
            f"compression.bnb_weights needs a SlimModule, got {type(pl_module).__name__}",
        )
        if any(e.get("kind") == "bnb" for e in pl_module.structure_log):
            return  # already quantized (loaded from a quantized checkpoint)
        net = pl_module.net
        counts = list(top1_accuracy(net, trainer.test_dataloaders, pl_module.device))
        before = {"size_bytes": size_on_disk(net)}
        names = quantize_linear_weights(net, self.mode, skip=self.skip)
        require(
            bool(names),
            f"model.net ({type(net).__name__}) has no nn.Linear layer for bitsandbytes to "
            "quantize (compression.bnb_weights.skip may list them all)",
        )
        pl_module.record_structure({"kind": "bnb", "mode": self.mode, "modules": names})
        pl_module.net_changed()
        log.info(f"bitsandbytes: {len(names)} linear layers now hold {self.mode} weights")
        if not self.report:
            return
        counts += top1_accuracy(net, trainer.test_dataloaders, pl_module.device)
        after = {"size_bytes": size_on_disk(net)}
        totals = trainer.strategy.reduce(
            torch.tensor(counts, dtype=torch.float64, device=pl_module.device), reduce_op="sum"
        ).tolist()
        if totals[1] > 0:
            before["test_acc"] = totals[0] / totals[1]
            after["test_acc"] = totals[2] / totals[3]
        section = {
            "method": f"bitsandbytes {self.mode} linear weights",
            "layers": names,
            **compare(before, after),
        }
        if totals[1] > 0:
            section["test_acc_change"] = after["test_acc"] - before["test_acc"]
        add_section(pl_module, "bnb_weights", section)
        log.info(f"bitsandbytes report: {section}")
