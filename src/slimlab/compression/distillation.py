"""Knowledge distillation: train the module's network against a frozen teacher.

`KnowledgeDistillation` is the callback behind `compression=distill`. It works on any
`SlimModule` (see `slimlab.models.base`): it reads `net` and `example_input_array`, adds
its losses with `add_loss_term` and sets `task_loss_weight = 1 - alpha`. The training
loss becomes

    (1 - alpha) * task_loss
    + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))          logged as train/kd
    + feature_weight * mean over pairs of MSE(proj(s_feat), t_feat)  logged as train/kd_feat

with `s`/`t` the student's/teacher's logits. The KL term is Hinton et al. (2015): the
teacher's softened distribution is the target (what `F.kl_div(log p_s, log p_t,
log_target=True)` computes), which equals the soft-target cross-entropy up to a constant;
the T^2 keeps its gradients on the scale of the task loss when T changes. With `hard=True`
the KD term is DeiT's hard distillation (Touvron et al. 2021) instead:
`alpha * cross_entropy(s, argmax t)`, the teacher's top class as a second label (T unused).

Where things live, and why:

- The teacher is an attribute of this callback, never a submodule of the LightningModule:
  it is not in the student's `state_dict`, checkpoint, hyper-parameters, parameter count,
  optimizer or DDP wrapper. Every DDP rank builds its own copy and runs it on its shard.
- The teacher sees exactly what the student sees: a forward pre-hook on `net` records the
  input of each training forward, and the teacher runs on it under `no_grad`, in eval mode.
- Feature projections (when a student and teacher layer differ in width) are trained with
  the student. They are attached to the LightningModule as the submodule
  `distill_projections` during `fit` only, so `configure_optimizers` (also when pruning or
  QAT rebuilds the optimizer), DDP gradient sync, device moves and AMP all treat them like
  the student's own parameters. They are kept out of the module's `state_dict` (so the
  student checkpoint loads into a plain module in `eval.py`) and saved instead in this
  callback's state, which Lightning restores on `ckpt_path=` resume before the optimizer
  state, so a resume continues exactly. They are detached again at the end of `fit`.

Timeline:

- `setup`: the strategy and the module's contract are checked, the teacher is built (for
  `teacher_ckpt: latest`, the newest finished run of `teacher_name`; the log says which
  checkpoint, from which epoch of how many), student and teacher run once on the example input
  (same classes? the paired layers exist?), the loss terms are added.
- the first training batch: if the module's `training_step` never called `combine_loss`, the
  KD terms are not in the loss and the run stops saying so.
- every training batch: the teacher runs on the student's input (once), the terms are added.
- the end of `fit`: `compression_report["distillation"]` (hence metrics.json) gets the teacher,
  the settings, and with `report` enabled the final student against the teacher (params, MACs,
  size, latency) plus, once the run tests, the teacher's test accuracy.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from typing_extensions import override

from slimlab.compression import measure
from slimlab.compression.callback import CompressionCallback, Stage
from slimlab.models.base import SlimModule, call_net, logits_of
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.logging import get_logger
from slimlab.utils.plain import to_plain

log = get_logger(__name__)

KEY = "compression.distill"  # config key named in error messages
PROJECTIONS = "distill_projections"  # attribute on the LightningModule during fit
LOSS_TERMS = ("kd", "kd_feat")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    Classes on dim 1; the KL is summed over classes and averaged over everything else.
    """
    log_p_s = F.log_softmax(student.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * temperature**2


def checkpoint_progress(path: Path) -> dict[str, Any]:
    """How far a checkpoint's run trained: epochs done, the run's max_epochs, and whether it
    finished (its run folder holds metrics.json, or it trained all max_epochs)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {"epochs": None, "max_epochs": None, "finished": False}
    epochs = int(checkpoint["epoch"]) + 1 if "epoch" in checkpoint else None
    run = (checkpoint.get("slimlab") or {}).get("run_config") or {}
    max_epochs = (run.get("trainer") or {}).get("max_epochs")
    complete = epochs is not None and isinstance(max_epochs, int) and epochs >= max_epochs
    finished = (path.parent.parent / "metrics.json").is_file() or complete
    return {"epochs": epochs, "max_epochs": max_epochs, "finished": finished}


def describe_progress(progress: dict[str, Any]) -> str:
    """ "epoch 16 of 20" for a `checkpoint_progress`."""
    of = f" of {progress['max_epochs']}" if progress.get("max_epochs") is not None else ""
    return f"epoch {progress['epochs']}{of}"


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, list | tuple) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _channel_dim(feature: torch.Tensor) -> int:
    """Channels are dim 1 of image features (N, C, H, W) and the last dim otherwise."""
    return 1 if feature.dim() == 4 else feature.dim() - 1


def _projection(student: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
    """Identity when widths match, else a learned 1x1 conv (images) or linear map to the
    teacher's width."""
    c_s, c_t = student.shape[_channel_dim(student)], teacher.shape[_channel_dim(teacher)]
    if c_s == c_t:
        return nn.Identity()
    if student.dim() == 4:
        return nn.Conv2d(c_s, c_t, kernel_size=1, bias=False)
    return nn.Linear(c_s, c_t, bias=False)


class _Hook:
    """A forward (pre-)hook calling `fn`. A deep copy of the hooked network (QAT's float twin,
    int8 conversion, reports) gets an inert hook instead of a copy of this callback."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        if self.fn is not None:
            self.fn(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> _Hook:
        return _Hook(None)


def _drop_own_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    # state_dict post-hook of the projections: absent from the LightningModule's state_dict
    # (and so from the student's checkpoint); saved by the callback instead.
    if prefix:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]


def _ignore_own_missing_keys(module: nn.Module, incompatible_keys: Any) -> None:
    # load_state_dict post-hook: a student checkpoint never holds the projections.
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if PROJECTIONS not in k.split(".")]


class KnowledgeDistillation(CompressionCallback):
    """Distills a frozen teacher into the module's `net` (see the module docstring).

    Give the teacher as `teacher_ckpt` (a SlimLab checkpoint, pruned or not, rebuilt from
    its own config; or `latest` for the newest last.ckpt of experiment `teacher_name`) or
    as `teacher_net` (a net config or module, optionally with `teacher_weights`, a file
    holding its state_dict). `feature_pairs` lists [student layer, teacher layer] names
    from `net.named_modules()` whose outputs are matched by MSE. `report`: true, false, or
    {enabled, latency, repeats} (the student vs the teacher, and the teacher's test accuracy).
    """

    key = KEY
    stage = Stage.DISTILL

    def __init__(
        self,
        teacher_ckpt: str | None = None,
        teacher_net: nn.Module | dict | None = None,
        teacher_weights: str | None = None,
        teacher_name: str | None = None,
        log_dir: str = "logs",
        temperature: float = 4.0,
        alpha: float = 0.9,
        feature_pairs: Sequence[Sequence[str]] = (),
        feature_weight: float = 1.0,
        init_student: bool = False,
        hard: bool = False,
        report: bool | Mapping[str, Any] = True,
    ) -> None:
        super().__init__()
        teacher_net = to_plain(teacher_net)
        feature_pairs = [list(p) for p in (to_plain(feature_pairs) or [])]
        require(
            teacher_ckpt is None or teacher_net is None,
            f"{KEY}.teacher_ckpt and {KEY}.teacher_net are both set: give one teacher",
        )
        require(
            teacher_weights is None or teacher_net is not None,
            f"{KEY}.teacher_weights={teacher_weights} needs {KEY}.teacher_net (the network to "
            "load them into); a checkpoint teacher is given as teacher_ckpt alone",
        )
        if teacher_ckpt is not None and str(teacher_ckpt) != "latest":
            require(
                Path(teacher_ckpt).expanduser().is_file(),
                f"{KEY}.teacher_ckpt={teacher_ckpt} does not exist or is not a file: give the "
                ".ckpt of a trained teacher (e.g. logs/train/<name>/runs/<run>/checkpoints/"
                "last.ckpt) or teacher_ckpt=latest with teacher_name=<its experiment name>",
            )
        if teacher_weights is not None:
            require(
                Path(teacher_weights).expanduser().is_file(),
                f"{KEY}.teacher_weights={teacher_weights} does not exist or is not a file",
            )
        require(
            isinstance(temperature, int | float) and temperature > 0,
            f"{KEY}.temperature={temperature} is out of range: give a temperature > 0 "
            "(1 = plain softmax; 2-8 is usual)",
        )
        require(
            isinstance(alpha, int | float) and 0.0 <= alpha <= 1.0,
            f"{KEY}.alpha={alpha} is out of range: give the weight of the KD term in [0, 1] "
            "(the task loss gets 1 - alpha)",
        )
        require(
            isinstance(hard, bool),
            f"{KEY}.hard={hard!r} is not a boolean: give true (the teacher's top class as a "
            "label, DeiT's hard distillation) or false (its softened distribution)",
        )
        require(
            isinstance(feature_weight, int | float) and feature_weight >= 0,
            f"{KEY}.feature_weight={feature_weight} is out of range: give a weight >= 0",
        )
        for pair in feature_pairs:
            require(
                len(pair) == 2 and all(isinstance(n, str) for n in pair),
                f"{KEY}.feature_pairs entry {pair} is invalid: give [student_layer, "
                "teacher_layer] names, e.g. [[features.3, features.3]]",
            )
        self.teacher_ckpt = None if teacher_ckpt is None else str(teacher_ckpt)
        self.teacher_net = teacher_net
        self.teacher_weights = teacher_weights
        self.teacher_name = teacher_name
        self.log_dir = log_dir
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.feature_pairs = feature_pairs
        self.feature_weight = float(feature_weight)
        self.init_student = init_student
        self.hard = hard
        self.report = measure.report_settings(report, KEY)

        self.teacher: nn.Module | None = None
        self.teacher_source = ""
        self.projections: nn.ModuleDict | None = None
        self._pending_projections: dict[str, torch.Tensor] | None = None
        self._student_initialized = False
        self._hooks: list[Any] = []
        self._hooked: list[nn.Module] = []  # [net, student layers...] the hooks sit on
        self._teacher_hooks: list[Any] = []
        self._inputs: tuple[tuple, dict] | None = None
        self._teacher_logits: torch.Tensor | None = None
        self._student_feats: dict[int, torch.Tensor] = {}
        self._teacher_feats: dict[int, torch.Tensor] = {}
        self._saved_task_weight = 1.0
        self._teacher_data: dict | None = None
        self._teacher_progress: dict[str, Any] = {}  # epoch / max_epochs of a checkpoint teacher
        self._test_counts = [0, 0]  # the teacher's (correct, seen) on the test set

    # -- building the teacher ---------------------------------------------------------------
    def _resolve_ckpt(self) -> str:
        """The teacher checkpoint's path: `teacher_ckpt`, or for `latest` the newest last.ckpt
        of a finished run of `teacher_name` (the newest unfinished one if none finished)."""
        assert self.teacher_ckpt is not None
        if self.teacher_ckpt != "latest":
            return str(Path(self.teacher_ckpt).expanduser().resolve())
        require(
            bool(self.teacher_name),
            f"{KEY}.teacher_ckpt=latest needs {KEY}.teacher_name=<experiment name of the "
            "teacher run>, e.g. digits_cnn",
        )
        root = Path(self.log_dir) / "train" / str(self.teacher_name)
        candidates = sorted(
            root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        require(
            bool(candidates),
            f"{KEY}.teacher_ckpt=latest found no last.ckpt under {root}: train the teacher "
            f"first (python train.py experiment={self.teacher_name}) or give "
            f"{KEY}.teacher_ckpt=<path to its .ckpt>",
        )
        unfinished = []
        for path in candidates:
            if checkpoint_progress(path)["finished"]:
                if unfinished:
                    log.warning(
                        f"{KEY}.teacher_ckpt=latest skips {len(unfinished)} newer run(s) of "
                        f"{self.teacher_name} that did not finish (the newest: {unfinished[0]}, "
                        f"{describe_progress(checkpoint_progress(unfinished[0]))})"
                    )
                return str(path.resolve())
            unfinished.append(path)
        return str(candidates[0].resolve())

    def build_teacher(self) -> nn.Module:
        """The teacher network, in eval mode with gradients off (built on the CPU)."""
        if self.teacher_ckpt is not None:
            from slimlab.models.base import load_module

            path = self._resolve_ckpt()
            try:
                module = load_module(path)
            except Exception as exc:
                raise ConfigError(
                    f"{KEY}.teacher_ckpt={path} could not be loaded as a SlimLab checkpoint "
                    f"({type(exc).__name__}: {exc}): give a .ckpt written by train.py, or the "
                    f"teacher as {KEY}.teacher_net (+ teacher_weights)"
                ) from exc
            teacher = module.net
            self._teacher_data = (module.run_config or {}).get("data")
            self.teacher_source = path
            self._teacher_progress = checkpoint_progress(Path(path))
            self._announce_teacher(path)
        elif self.teacher_net is not None:
            teacher = self.teacher_net
            if not isinstance(teacher, nn.Module):
                teacher = instantiate(teacher)
            require(
                isinstance(teacher, nn.Module),
                f"{KEY}.teacher_net built {type(teacher).__name__}, not an nn.Module",
            )
            if self.teacher_weights is not None:
                state = torch.load(self.teacher_weights, map_location="cpu", weights_only=True)
                state = state.get("state_dict", state)
                if any(k.startswith("net.") for k in state):  # a SlimLab/Lightning checkpoint
                    state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
                try:
                    teacher.load_state_dict(state)
                except RuntimeError as exc:
                    raise ConfigError(
                        f"{KEY}.teacher_weights={self.teacher_weights} does not fit "
                        f"{KEY}.teacher_net: {exc}"
                    ) from exc
                self.teacher_source = str(self.teacher_weights)
            else:
                self.teacher_source = f"net config {type(teacher).__name__} (no weights file)"
                log.warning(
                    f"{KEY}.teacher_net has no teacher_weights: the teacher is only as good as "
                    "its constructor's initialisation (fine for pretrained=True constructors)"
                )
        else:
            raise ConfigError(
                f"{KEY} has no teacher: give {KEY}.teacher_ckpt=<.ckpt of a trained teacher> "
                f"(or latest with teacher_name=<experiment>), or {KEY}.teacher_net=<net config>"
            )
        teacher.eval()
        teacher.requires_grad_(False)
        return teacher

    def _announce_teacher(self, path: str) -> None:
        """Say which checkpoint is the teacher, from which epoch of how many; warn if its run
        did not finish."""
        progress = self._teacher_progress
        if progress["finished"]:
            log.info(f"Teacher: {path} ({describe_progress(progress)}, a finished run)")
            return
        latest = self.teacher_ckpt == "latest"
        log.warning(
            f"Teacher: {path} ({describe_progress(progress)}) is from a run that did not finish"
            + (f", and no run of {self.teacher_name} finished" if latest else "")
            + ": the student learns from a partly trained teacher. Finish the teacher run "
            f"(resume it with ckpt_path=<its last.ckpt>) or give {KEY}.teacher_ckpt=<path>"
        )

    # -- Lightning hooks --------------------------------------------------------------------
    @override
    def layer_hooks(self) -> tuple[str, Any] | None:
        return (f"{KEY}.feature_pairs", self.feature_pairs) if self.feature_pairs else None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        pl_module = self.check_setup(trainer, pl_module)
        if self.teacher is None:
            self.teacher = self.build_teacher()
            self._warn_if_other_data(pl_module)
        if self.init_student and not self._student_initialized:
            self._copy_teacher_into(pl_module.net)
        self._student_initialized = True
        self._probe_and_build(pl_module)
        if self.projections is not None:
            pl_module.add_module(PROJECTIONS, self.projections)
        self._hook_student(pl_module.net)
        self._hook_teacher()
        self._saved_task_weight = pl_module.task_loss_weight
        pl_module.task_loss_weight = 1.0 - self.alpha
        if self.alpha > 0:
            pl_module.add_loss_term("kd", self._kd_term)
        if self.feature_pairs and self.feature_weight > 0:
            pl_module.add_loss_term("kd_feat", self._feature_term)
        log.info(
            f"Distilling from {self.teacher_source} ({measure.count_params(self.teacher):,} "
            f"teacher params, {measure.count_params(pl_module.net):,} student params): "
            f"{'hard labels' if self.hard else f'T={self.temperature}'}, "
            f"alpha={self.alpha}, feature pairs={self.feature_pairs or 'none'}"
        )

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the strategy has moved the student to its device (and dtype) by now
        assert self.teacher is not None
        dtype = next((p.dtype for p in pl_module.net.parameters() if p.is_floating_point()), None)
        self.teacher.to(device=pl_module.device)
        if dtype is not None and dtype != torch.float32:
            self.teacher.to(dtype=dtype)

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # pruning/QAT may have replaced the net or its layers since the hooks were placed
        net = pl_module.net
        layers = [self._layer(net, s, "student", "feature_pairs") for s, _ in self.feature_pairs]
        current = [net, *layers]
        if any(a is not b for a, b in zip(current, self._hooked, strict=True)):
            self._hook_student(pl_module.net)
        self._inputs = None
        self._teacher_logits = None
        self._student_feats.clear()
        self._teacher_feats.clear()

    @override
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.check_loss_terms_used(pl_module, LOSS_TERMS)  # in the loss from the first batch

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.teacher is not None
        progress = self._teacher_progress
        section: dict[str, Any] = {
            "teacher": self.teacher_source,
            "teacher_epochs": progress.get("epochs"),
            "teacher_max_epochs": progress.get("max_epochs"),
            "teacher_finished": progress.get("finished"),
            "temperature": self.temperature,
            "hard": self.hard,
            "alpha": self.alpha,
            "feature_pairs": copy.deepcopy(self.feature_pairs),
            "feature_weight": self.feature_weight,
            # counts the packed weights of int8 layers too (a QAT student ends converted)
            "teacher_params": measure.count_params(self.teacher),
            "student_params": measure.count_params(pl_module.net),
        }
        if self.report.enabled and trainer.is_global_zero:
            example = pl_module.example_input_array
            teacher = measure.measure_as(self.teacher, example, self.report)
            student = measure.measure_as(pl_module.net, example, self.report)
            section["vs_teacher"] = measure.compare(teacher, student)
        measure.add_section(pl_module, "distillation", section)

    # the teacher's test accuracy, next to the student's, when the run tests after fit
    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test_counts = [0, 0]

    @override
    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.report.enabled or self.teacher is None:
            return
        pair = measure.inputs_and_labels(batch)
        if pair is None:
            return  # not (inputs, class labels): nothing to score
        inputs, labels = pair
        with torch.no_grad():
            output = call_net(self.teacher, measure.move_to(inputs, pl_module.device))
        predicted = logits_of(output).argmax(dim=-1)
        self._test_counts[0] += int((predicted.cpu() == labels.cpu()).sum())
        self._test_counts[1] += int(labels.numel())

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        correct, seen = measure.sum_over_ranks(trainer, self._test_counts, pl_module.device)
        section = (getattr(pl_module, "compression_report", None) or {}).get("distillation")
        if seen > 0 and section is not None:
            section["teacher_test_acc"] = correct / seen

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not isinstance(pl_module, SlimModule):
            return
        for handle in self._hooks + self._teacher_hooks:
            handle.remove()
        self._hooks, self._hooked, self._teacher_hooks = [], [], []
        pl_module.remove_loss_term("kd")
        pl_module.remove_loss_term("kd_feat")
        pl_module.task_loss_weight = self._saved_task_weight
        if PROJECTIONS in pl_module._modules:
            delattr(pl_module, PROJECTIONS)
        self._inputs = self._teacher_logits = None
        self._student_feats.clear()
        self._teacher_feats.clear()

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.projections is None:
            return {}
        return {"projections": self.projections.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("projections")
        if saved is None:
            return
        if self.projections is None:
            self._pending_projections = saved  # applied when setup builds them
        else:
            self._load_projections(saved)

    # -- setup helpers ----------------------------------------------------------------------
    def _warn_if_other_data(self, pl_module: SlimModule) -> None:
        """A teacher trained on another split may have seen the student's test images."""
        student = (pl_module.run_config or {}).get("data")
        if not self._teacher_data or not student:
            return
        loader_only = {"batch_size", "num_workers", "pin_memory"}
        differ = sorted(
            k
            for k in set(student) | set(self._teacher_data)
            if k not in loader_only and student.get(k) != self._teacher_data.get(k)
        )
        if differ:
            log.warning(
                f"the teacher was trained with other data settings ({', '.join(differ)}: "
                f"{[self._teacher_data.get(k) for k in differ]} vs the student's "
                f"{[student.get(k) for k in differ]}): if the splits differ, the student's "
                "test set may hold images the teacher trained on"
            )

    def _copy_teacher_into(self, net: nn.Module) -> None:
        assert self.teacher is not None
        try:
            net.load_state_dict(self.teacher.state_dict())
        except RuntimeError as exc:
            raise ConfigError(
                f"{KEY}.init_student=true needs the student network to have the teacher's "
                f"architecture (same model.net, not pruned/quantized): {exc}"
            ) from exc
        log.info("Initialised the student with the teacher's weights")

    def _layer(self, net: nn.Module, name: str, side: str, key: str) -> nn.Module:
        try:
            return net.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in net.named_modules() if n]
            shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
            raise ConfigError(
                f"{KEY}.{key} names {side} layer {name!r}, which {type(net).__name__} does not "
                f"have: give a name from net.named_modules(): {shown}"
            ) from None

    def _probe_and_build(self, pl_module: SlimModule) -> None:
        """Run student and teacher once on the example input: check classes, build projections."""
        assert self.teacher is not None
        net = pl_module.net
        s_layers = [self._layer(net, s, "student", "feature_pairs") for s, _ in self.feature_pairs]
        t_layers = [
            self._layer(self.teacher, t, "teacher", "feature_pairs") for _, t in self.feature_pairs
        ]
        s_feats: dict[int, torch.Tensor] = {}
        t_feats: dict[int, torch.Tensor] = {}

        def keep(store: dict[int, torch.Tensor], i: int):
            return lambda module, args, output: store.__setitem__(i, _first_tensor(output))

        handles = [m.register_forward_hook(keep(s_feats, i)) for i, m in enumerate(s_layers)]
        handles += [m.register_forward_hook(keep(t_feats, i)) for i, m in enumerate(t_layers)]
        example = measure.move_to(pl_module.example_input_array, pl_module.device)
        self.teacher.to(pl_module.device)
        was_training = net.training
        try:
            net.eval()
            with torch.no_grad():
                s_out = logits_of(call_net(net, example))
                try:
                    t_out = logits_of(call_net(self.teacher, example))
                except Exception as exc:
                    raise ConfigError(
                        f"the teacher ({self.teacher_source}) fails on the student's example "
                        f"input {measure.describe_input(example)} ({type(exc).__name__}: {exc}): "
                        "teacher and student must take the same inputs"
                    ) from exc
        finally:
            net.train(was_training)
            for handle in handles:
                handle.remove()
        assert s_out is not None and t_out is not None
        require(
            s_out.shape[1:] == t_out.shape[1:],
            f"{KEY}: the teacher ({self.teacher_source}) outputs {tuple(t_out.shape[1:])} per "
            f"example but the student {tuple(s_out.shape[1:])}: the teacher must predict the "
            f"same classes (teacher {t_out.shape[1]}, student {s_out.shape[1]})",
        )
        if not self.feature_pairs:
            return
        modules = {}
        for i, (s_name, t_name) in enumerate(self.feature_pairs):
            s, t = s_feats.get(i), t_feats.get(i)
            require(
                s is not None and t is not None,
                f"{KEY}.feature_pairs [{s_name}, {t_name}]: the layer produced no tensor "
                "output on the example input (pick a layer that runs in forward)",
            )
            c_s, c_t = _channel_dim(s), _channel_dim(t)
            spatial_s = [n for d, n in enumerate(s.shape[1:], 1) if d != c_s]
            spatial_t = [n for d, n in enumerate(t.shape[1:], 1) if d != c_t]
            require(
                s.dim() == t.dim() and spatial_s == spatial_t,
                f"{KEY}.feature_pairs [{s_name}, {t_name}]: student output "
                f"{tuple(s.shape[1:])} and teacher output {tuple(t.shape[1:])} differ in more "
                "than the channel width: pair layers at the same resolution",
            )
            modules[str(i)] = _projection(s, t)
        if self.projections is None or self._shapes(self.projections) != self._shapes(modules):
            self.projections = nn.ModuleDict(modules).to(pl_module.device)
            self.projections.register_state_dict_post_hook(_drop_own_keys)
            self.projections.register_load_state_dict_post_hook(_ignore_own_missing_keys)
        if self._pending_projections is not None:
            self._load_projections(self._pending_projections)
            self._pending_projections = None

    @staticmethod
    def _shapes(modules: Any) -> list:
        return [
            (type(m).__name__, tuple(getattr(m, "weight", torch.empty(0)).shape))
            for m in dict(modules).values()
        ]

    def _load_projections(self, saved: dict[str, torch.Tensor]) -> None:
        assert self.projections is not None
        try:
            self.projections.load_state_dict(saved)
        except RuntimeError as exc:
            raise ConfigError(
                f"the checkpoint's feature projections do not fit {KEY}.feature_pairs="
                f"{self.feature_pairs}: resume with the feature pairs it was trained with ({exc})"
            ) from exc

    def _hook_student(self, net: nn.Module) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = [net.register_forward_pre_hook(_Hook(self._record_input), with_kwargs=True)]
        self._hooked = [net]
        for i, (s_name, _) in enumerate(self.feature_pairs):
            layer = self._layer(net, s_name, "student", "feature_pairs")
            self._hooks.append(layer.register_forward_hook(_Hook(self._student_feature_hook(i))))
            self._hooked.append(layer)

    def _hook_teacher(self) -> None:
        assert self.teacher is not None
        for handle in self._teacher_hooks:
            handle.remove()
        self._teacher_hooks = []
        for i, (_, t_name) in enumerate(self.feature_pairs):
            layer = self._layer(self.teacher, t_name, "teacher", "feature_pairs")

            def hook(module, args, output, i=i):
                self._teacher_feats[i] = _first_tensor(output)

            self._teacher_hooks.append(layer.register_forward_hook(_Hook(hook)))

    # -- per-step ---------------------------------------------------------------------------
    def _record_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training and torch.is_grad_enabled():
            self._inputs = (args, kwargs)
            self._teacher_logits = None

    def _student_feature_hook(self, i: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if module.training and torch.is_grad_enabled():
                self._student_feats[i] = _first_tensor(output)

        return hook

    def _run_teacher(self) -> torch.Tensor:
        """Teacher logits for the student's current training input (computed once per step)."""
        if self._teacher_logits is None:
            if self._inputs is None:
                raise RuntimeError(
                    f"{KEY}: the student's net did not run in this training step, so the "
                    "teacher has no input: the module's training_step must call self.net"
                )
            assert self.teacher is not None
            args, kwargs = self._inputs
            with torch.no_grad():
                self._teacher_logits = logits_of(self.teacher(*args, **kwargs))
        assert self._teacher_logits is not None
        return self._teacher_logits

    def _kd_term(self, batch: Any, logits: torch.Tensor) -> torch.Tensor:
        teacher = self._run_teacher()
        if self.hard:
            return self.alpha * F.cross_entropy(logits.float(), teacher.argmax(dim=1))
        return self.alpha * kd_loss(logits, teacher, self.temperature)

    def _feature_term(self, batch: Any, logits: torch.Tensor) -> torch.Tensor:
        self._run_teacher()
        assert self.projections is not None
        losses = []
        for i, (s_name, t_name) in enumerate(self.feature_pairs):
            s, t = self._student_feats.get(i), self._teacher_feats.get(i)
            if s is None or t is None:
                raise RuntimeError(
                    f"{KEY}.feature_pairs [{s_name}, {t_name}]: a layer did not run in this "
                    "training step (was the network rewritten?): pair layers that run in "
                    "every forward pass"
                )
            projection = self.projections[str(i)]
            width = s.shape[_channel_dim(s)]
            expected = getattr(projection, "in_channels", getattr(projection, "in_features", None))
            if expected is None:  # identity: the student width had to equal the teacher's
                expected = t.shape[_channel_dim(t)]
            if width != expected:
                raise ConfigError(
                    f"{KEY}.feature_pairs student layer {s_name!r} changed width from "
                    f"{expected} to {width} during training (pruned?): keep the layer that "
                    "produces it out of pruning (compression.prune.ignored_layers) or pair a "
                    "layer whose width does not change"
                )
            losses.append(F.mse_loss(projection(s).float(), t.float()))
        return self.feature_weight * torch.stack(losses).mean()
