"""The surface every SlimLab LightningModule offers to compression callbacks.

Compression callbacks (pruning, quantization, distillation, 8/4-bit weights) work on any module
that subclasses `SlimModule`, without knowing its code. The contract:

- ``self.net``: the plain ``nn.Module`` that compression may rewrite or replace. It returns
  logits: a tensor, or a dict / object holding a ``logits`` tensor (as Hugging Face models
  return); `logits_of` reads either. Call ``self.net_changed()`` after replacing or reshaping it.
- ``self.example_input_array``: one example input of batch size 1 with the real dtypes and
  structure: a tensor, or a dict of named tensors (integer token ids and an attention mask
  included) passed to ``net`` as keyword arguments (`call_net`). Compression traces it, counts
  MACs on it, times latency on it (a batch of N repeats it N times) and exports with it; nothing
  feeds a random float tensor in its place. Lightning's model summary uses it too.
- ``self.add_loss_term(name, fn)``: ``fn(batch, logits) -> scalar tensor`` is added to the
  training loss by ``self.combine_loss(task_loss, batch, logits)``, which every
  ``training_step`` must call and return (``loss, parts = self.combine_loss(...)``) and which
  logs nothing itself. ``self.task_loss_weight`` scales the module's own task loss
  (distillation sets it to ``1 - alpha``). A compression callback whose term was never called
  in the first training batch stops the run with a message saying so.
- ``self.compression_report``: each compression callback puts its before/after section here
  (`slimlab.compression.measure.add_section`); the train entry writes it to metrics.json.
- Checkpoints: ``self.hparams`` (plain containers only) rebuild the dense network. A
  callback that changes the network's structure records one plain-data entry with
  ``self.record_structure({"kind": ..., ...})``. The entries are saved under
  ``checkpoint["slimlab"]["structure"]`` and replayed, in order, by the restorer of their kind
  before the weights load, so a pruned or quantized checkpoint loads back into its own shape
  through ``load_from_checkpoint``, ``ckpt_path=`` resume and ``eval.py`` while the file still
  opens with ``torch.load(weights_only=True)``.

Restorers: this package names no compression technique. A restorer is found by its kind in
the ``slimlab.structure`` entry-point group, which each package declares in its own
pyproject.toml (SlimLab's: ``prune``, ``qat``, ``bnb``), so a fresh process that imported only
`slimlab.models` loads any checkpoint; `register_structure_restorer` adds one at run time.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from torch import nn
from typing_extensions import override

from slimlab.utils.errors import ConfigError
from slimlab.utils.params import count_parameters  # noqa: F401  (train/eval import it here)
from slimlab.utils.plain import is_plain

LossTerm = Callable[[Any, torch.Tensor], torch.Tensor]
Restorer = Callable[["SlimModule", dict], None]

# entry-point group of structure restorers: name = kind, value = "module:function"; the function
# is called as fn(module, entry) and must bring module.net to the structure `entry` records
RESTORER_GROUP = "slimlab.structure"
_RUNTIME_RESTORERS: dict[str, Restorer] = {}


def register_structure_restorer(kind: str, restorer: Restorer) -> None:
    """Replay structure entries of `kind` with `restorer(module, entry)` in this process."""
    _RUNTIME_RESTORERS[kind] = restorer


def structure_restorer(kind: str) -> Restorer:
    """The restorer of structure entries of `kind`: registered at run time, else by entry point."""
    if kind in _RUNTIME_RESTORERS:
        return _RUNTIME_RESTORERS[kind]
    found = metadata.entry_points(group=RESTORER_GROUP, name=kind)
    if not found:
        known = sorted({*_RUNTIME_RESTORERS, *metadata.entry_points(group=RESTORER_GROUP).names})
        raise ConfigError(
            f"checkpoint structure entry kind={kind!r} has no restorer: known kinds are {known}. "
            f"Declare it in the '{RESTORER_GROUP}' entry-point group of the package that "
            "records it (and reinstall that package: pip install -e .), or call "
            "slimlab.models.register_structure_restorer before loading"
        )
    if len(found) > 1:
        owners = sorted(ep.value for ep in found)
        raise ConfigError(f"structure kind={kind!r} has more than one restorer: {owners}")
    (entry_point,) = found
    return entry_point.load()


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
    compression_report: dict[str, dict[str, Any]]

    def __init__(self) -> None:
        super().__init__()
        self.loss_terms: dict[str, LossTerm] = {}
        self.loss_term_calls: Counter[str] = Counter()
        self.task_loss_weight: float = 1.0
        self.structure_log: list[dict] = []
        self.run_config: dict | None = None
        self.compression_report = {}

    # -- loss terms -----------------------------------------------------------------------
    def add_loss_term(self, name: str, fn: LossTerm) -> None:
        """Add `fn(batch, logits)` to the training loss, logged as train/<name>."""
        self.loss_terms[name] = fn
        self.loss_term_calls[name] = 0

    def remove_loss_term(self, name: str) -> None:
        """Stop adding the loss term `name` (no error if absent)."""
        self.loss_terms.pop(name, None)

    def combine_loss(
        self, task_loss: torch.Tensor, batch: Any, logits: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss: `task_loss_weight * task_loss` plus every added loss term.

        Call it in `training_step` with the batch and the net's logits and return its loss;
        the second value holds each term's detached value, to log as train/<name>.
        """
        loss = self.task_loss_weight * task_loss
        parts: dict[str, torch.Tensor] = {}
        for name, fn in self.loss_terms.items():
            term = fn(batch, logits)
            self.loss_term_calls[name] += 1
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
            structure_restorer(entry["kind"])(self, entry)
            self.structure_log.append(copy.deepcopy(entry))
        self.net_changed()

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["slimlab"] = {
            "structure": copy.deepcopy(self.structure_log),
            "run_config": copy.deepcopy(self.run_config),
        }

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("slimlab", {})
        self.replay_structure(saved.get("structure", []))
        if self.run_config is None:
            self.run_config = saved.get("run_config")


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
