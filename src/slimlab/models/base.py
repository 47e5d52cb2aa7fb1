"""The surface every SlimLab LightningModule offers to compression callbacks.

Compression callbacks (pruning, quantization, distillation) work on any module that
subclasses `SlimModule`, without knowing its code. The contract:

- ``self.net``: the plain ``nn.Module`` that compression may rewrite or replace. Call
  ``self.net_changed()`` after replacing or reshaping it.
- ``self.example_input_array``: a batch-1 input tensor, used for tracing, dependency
  graphs, MAC counts and export (also Lightning's model summary).
- ``self.add_loss_term(name, fn)``: ``fn(batch, logits) -> scalar tensor`` is added to the
  training loss and logged as ``train/<name>``; ``self.task_loss_weight`` scales the
  module's own task loss (distillation sets it to ``1 - alpha``).
- Checkpoints: ``self.hparams`` (plain containers only) rebuild the dense network. A
  callback that changes the network's structure records one plain-data entry with
  ``self.record_structure({"kind": ..., ...})``. The entries are saved under
  ``checkpoint["slimlab"]["structure"]`` and replayed, in order, by the restorer registered
  for their kind before the weights load, so a pruned or quantized checkpoint loads back
  into its own shape through ``load_from_checkpoint``, ``ckpt_path=`` resume and ``eval.py``
  while the file still opens with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from torch import nn

from slimlab.utils.errors import ConfigError
from slimlab.utils.plain import is_plain

LossTerm = Callable[[Any, torch.Tensor], torch.Tensor]

# kind -> "module:function"; the function is called as fn(module, entry) and must reshape
# module.net to what `entry` records. Imported only when a checkpoint needs it.
STRUCTURE_RESTORERS: dict[str, str] = {
    "prune": "slimlab.compression.pruning:restore_pruning",
    "qat": "slimlab.compression.quantization:restore_quantization",
    "bnb": "slimlab.compression.bnb:restore_bnb",
}


def register_structure_restorer(kind: str, target: str) -> None:
    """Register `target` ("package.module:function") to replay structure entries of `kind`."""
    STRUCTURE_RESTORERS[kind] = target


def _restorer(kind: str) -> Callable[[SlimModule, dict], None]:
    if kind not in STRUCTURE_RESTORERS:
        raise ConfigError(
            f"checkpoint structure entry kind={kind!r} has no restorer: known kinds are "
            f"{sorted(STRUCTURE_RESTORERS)}; import the callback module that registers it"
        )
    module_name, _, function = STRUCTURE_RESTORERS[kind].partition(":")
    return getattr(importlib.import_module(module_name), function)


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a network's output: the tensor itself, or `output["logits"]` /
    `output.logits` (Hugging Face models return such objects)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        logits = output.get("logits")
    else:
        logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise ConfigError(
            f"model.net returned {type(output).__name__}, which holds no logits: a net must "
            "return a tensor of logits, or a dict/object with a `logits` tensor"
        )
    return logits


def call_net(net: nn.Module, inputs: Any) -> Any:
    """Run `net` on an input as the contract allows: a tensor, or a dict of named tensors."""
    return net(**inputs) if isinstance(inputs, Mapping) else net(inputs)


class SlimModule(L.LightningModule):
    """Base class holding the compression contract (see the module docstring)."""

    net: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self.loss_terms: dict[str, LossTerm] = {}
        self.task_loss_weight: float = 1.0
        self.structure_log: list[dict] = []
        self.run_config: dict | None = None

    # -- loss terms -----------------------------------------------------------------------
    def add_loss_term(self, name: str, fn: LossTerm) -> None:
        """Add `fn(batch, logits)` to the training loss, logged as train/<name>."""
        self.loss_terms[name] = fn

    def remove_loss_term(self, name: str) -> None:
        """Stop adding the loss term `name` (no error if absent)."""
        self.loss_terms.pop(name, None)

    def combine_loss(self, task_loss: torch.Tensor, batch: Any, logits: torch.Tensor):
        """Return the training loss and the logged value of each extra term."""
        loss = self.task_loss_weight * task_loss
        parts: dict[str, torch.Tensor] = {}
        for name, fn in self.loss_terms.items():
            term = fn(batch, logits)
            parts[name] = term.detach()
            loss = loss + term
        return loss, parts

    # -- structure ------------------------------------------------------------------------
    def net_changed(self) -> None:
        """Hook called after compression replaced or reshaped `self.net`."""

    def record_structure(self, entry: dict) -> None:
        """Append a plain-data structure entry (must hold "kind") to the checkpointed log."""
        if "kind" not in entry or not is_plain(entry):
            raise TypeError(
                "a structure entry must be a dict with a 'kind' key holding only plain "
                "containers (dict, list, str, int, float, bool, None)"
            )
        self.structure_log.append(copy.deepcopy(entry))

    def replay_structure(self, entries: list[dict]) -> None:
        """Bring `self.net` to the structure `entries` describe (entries already applied skip)."""
        if entries[: len(self.structure_log)] != self.structure_log:
            raise RuntimeError(
                "the checkpoint's structure log does not extend this module's: load it into a "
                "freshly built module"
            )
        for entry in entries[len(self.structure_log) :]:
            _restorer(entry["kind"])(self, entry)
            self.structure_log.append(copy.deepcopy(entry))
        self.net_changed()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["slimlab"] = {
            "structure": copy.deepcopy(self.structure_log),
            "run_config": copy.deepcopy(self.run_config),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("slimlab", {})
        self.replay_structure(saved.get("structure", []))
        if self.run_config is None:
            self.run_config = saved.get("run_config")


def count_parameters(module: nn.Module) -> int:
    """Number of parameters in `module`, trainable or not, int8 packed weights included."""
    from torch.ao.nn.quantized.modules.conv import _ConvNd as QuantizedConvNd
    from torch.ao.nn.quantized.modules.linear import Linear as QuantizedLinear

    total = sum(p.numel() for p in module.parameters())
    for m in module.modules():
        if isinstance(m, QuantizedConvNd | QuantizedLinear):  # weights live outside parameters()
            weight, bias = m.weight(), m.bias()
            total += weight.numel() + (bias.numel() if bias is not None else 0)
    return int(total)


def load_module(ckpt_path: str, model_class: str | None = None) -> SlimModule:
    """Load a SlimLab checkpoint into its own (possibly pruned or quantized) network.

    The class comes from `model_class`, else from the run config stored in the checkpoint.
    The file is read with `weights_only=True`: loading it cannot execute pickled code.
    """
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    run = (checkpoint.get("slimlab") or {}).get("run_config") or {}
    target = model_class or (run.get("model") or {}).get("_target_")
    if not target:
        raise ConfigError(
            f"ckpt_path={ckpt_path} holds no SlimLab run config: give model_class=<import path "
            "of its LightningModule>, e.g. model_class=slimlab.models.ImageClassifier"
        )
    cls = get_class(target)
    if not (isinstance(cls, type) and issubclass(cls, SlimModule)):
        raise ConfigError(f"model_class={target} is not a slimlab.models.SlimModule subclass")
    model_cfg = run.get("model") or {}
    built_args = any(isinstance(v, dict) and "_target_" in v for v in model_cfg.values())
    if model_class is None and built_args and model_cfg.get("_recursive_", True):
        # Hydra built its arguments (net, optimizer partials: lightning-hydra-template's
        # style); the checkpoint holds their configs, so rebuild the module the same way
        from hydra.utils import instantiate

        module = instantiate(model_cfg)
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
        return module
    return cls.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
