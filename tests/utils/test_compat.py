"""Each private API that slimlab.utils.compat touches is still where it expects it."""

from __future__ import annotations

from slimlab.utils import compat
from slimlab.utils.ddp import hydra_job_command


def test_lightning_hydra_subprocess_command_is_replaced() -> None:
    from lightning.pytorch.strategies.launchers import subprocess_script

    original = subprocess_script._hydra_subprocess_cmd
    try:
        compat.set_lightning_hydra_subprocess_command(hydra_job_command)
        assert subprocess_script._hydra_subprocess_cmd is hydra_job_command
    finally:
        subprocess_script._hydra_subprocess_cmd = original


def test_checkpoint_best_fields_are_all_model_checkpoint_tracks_and_reset_to_fresh() -> None:
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    callback = ModelCheckpoint(monitor="val/acc", mode="max")
    tracked = {k for k in callback.state_dict() if "best" in k or k.startswith("kth")}
    assert tracked == set(compat.CHECKPOINT_BEST_FIELDS), "update compat.forget_checkpoint_best"
    callback.best_k_models = {"a.ckpt": torch.tensor(0.9)}
    callback.kth_best_model_path = callback.best_model_path = "a.ckpt"
    callback.kth_value = callback.best_model_score = torch.tensor(0.9)
    compat.forget_checkpoint_best(callback)
    fresh = ModelCheckpoint(monitor="val/acc", mode="max").state_dict()
    for key in compat.CHECKPOINT_BEST_FIELDS:
        value = callback.state_dict()[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, fresh[key]), key
        else:
            assert value == fresh[key], key
    compat.set_best_checkpoint(callback, "b-int8.ckpt")
    assert callback.state_dict()["best_model_path"] == "b-int8.ckpt"


def test_early_stopping_wait_resets_to_fresh() -> None:
    import torch
    from lightning.pytorch.callbacks import EarlyStopping

    callback = EarlyStopping(monitor="val/loss", mode="min")
    assert set(compat.EARLY_STOPPING_BEST_FIELDS) <= set(callback.state_dict())
    callback.wait_count, callback.best_score = 3, torch.tensor(0.1)
    compat.forget_early_stopping_best(callback)
    fresh = EarlyStopping(monitor="val/loss", mode="min").state_dict()
    assert callback.wait_count == fresh["wait_count"]
    assert torch.equal(callback.best_score, fresh["best_score"])


def test_a_fresh_pruner_resumes_a_schedule_where_another_left_it() -> None:
    import copy

    import torch

    from slimlab.compression.pruning import build_pruner, layer_widths, prune_step
    from slimlab.models.nets import SmallCNN

    x = torch.zeros(1, 1, 8, 8)
    net = SmallCNN(widths=(16, 32, 64))
    first = build_pruner(net, x, "l1", "global", None, ["classifier"], amount=0.5, steps=2)
    prune_step(first)
    progress = compat.pruner_progress(first)
    assert progress["step"] == 1
    assert progress["scope_channels"] == {"DEFAULT_SCOPE": 16 + 32 + 64}  # the dense widths
    # a new process: a pruner built on the pruned network continues the same schedule
    resumed_net = copy.deepcopy(net)
    resumed = build_pruner(resumed_net, x, "l1", "global", None, ["classifier"], 0.5, steps=2)
    compat.resume_pruner(resumed, progress)
    prune_step(first)
    prune_step(resumed)
    assert layer_widths(resumed_net) == layer_widths(net)
    assert sum(layer_widths(net)[f"features.{i}.0"] for i in (0, 2, 4)) == (16 + 32 + 64) // 2


def test_head_removals_are_set_per_layer_and_dense_heads_survive_a_resume() -> None:
    import copy

    import torch

    from slimlab.compression.heads import heads_from_pruner, set_heads
    from slimlab.compression.pruning import autograd_on, build_pruner
    from slimlab.models.nets import VisionTransformer

    x = torch.zeros(1, 1, 8, 8)
    net = VisionTransformer(dim=32, depth=2, heads=4, mlp_ratio=1.0, dropout=0.0)
    pruner = build_pruner(net, x, "l1", "local", None, ["head"], 0.25, steps=4, head_amount=0.5)
    dense = compat.dense_heads(pruner)
    assert sorted(dense.values()) == [4, 4]  # one q/k/v layer per block, 4 heads each
    # the next step removes exactly what is asked of each layer: 1 head, then none
    first, second = list(pruner.num_heads)
    compat.set_next_head_removals(pruner, {first: 1, second: 0})
    with autograd_on():
        pruner.step()
    assert pruner.num_heads[first] == 3 and pruner.num_heads[second] == 4
    set_heads(net, heads_from_pruner(net, pruner.num_heads))
    # the dense counts are part of the saved progress, and a pruner on the pruned copy gets them
    progress = compat.pruner_progress(pruner)
    assert sorted(progress["dense_heads"].values()) == [4, 4] and progress["total_heads"] == 8
    pruned = copy.deepcopy(net)
    resumed = build_pruner(pruned, x, "l1", "local", None, ["head"], 0.25, 4, head_amount=0.5)
    compat.resume_pruner(resumed, progress)
    assert sorted(compat.dense_heads(resumed).values()) == [4, 4]
    assert resumed.initial_total_heads == 8 and resumed.current_step == 1


def test_loop_batch_applies_the_datamodules_transfer_hooks(tmp_path) -> None:
    import lightning as L
    import torch

    from slimlab.data import DigitsDataModule, Normalize
    from slimlab.models import ImageClassifier

    seen = {}

    class Capture(L.Callback):
        def on_train_end(self, trainer, pl_module) -> None:
            raw = next(iter(trainer.train_dataloader))
            seen["raw"], seen["loop"] = raw, compat.loop_batch(pl_module, raw, torch.device("cpu"))

    model = ImageClassifier(
        net={"_target_": "slimlab.models.nets.MLP", "hidden": [8]},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    )
    data = DigitsDataModule(batch_size=32, normalize=Normalize(mean=[1.0], std=[0.5]))
    trainer = L.Trainer(
        max_steps=1,
        callbacks=[Capture()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    (raw_x, raw_y), (x, y) = seen["raw"], seen["loop"]
    torch.testing.assert_close(x, (raw_x - 1.0) / 0.5)  # the datamodule's normalization
    assert torch.equal(y, raw_y)


def test_exported_batchnorm_switches_alone() -> None:
    import pytest
    import torch
    from torch import nn

    pytest.importorskip("torchao")
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    model = torch.export.export(net, (torch.randn(2, 1, 5, 5),)).module()
    x = torch.randn(2, 1, 5, 5)
    compat.set_exported_batchnorm_training(model, training=False)
    running = model.state_dict()["1.running_mean"].clone()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    second = model(x)
    assert torch.equal(model.state_dict()["1.running_mean"], running)  # statistics frozen
    assert not torch.equal(first, second)  # dropout still in training mode


def test_hydra_job_error_reads_what_a_failed_job_raised() -> None:
    from hydra.core.utils import JobReturn, JobStatus

    error = RuntimeError("job 3 failed")
    failed = JobReturn(status=JobStatus.FAILED)
    failed.return_value = error
    assert compat.hydra_job_error(failed) is error
    completed = JobReturn(status=JobStatus.COMPLETED)
    completed.return_value = 0.5
    assert compat.hydra_job_error(completed) is None
    # the private field still backs the public property in the installed Hydra
    assert "_return_value" in {f.name for f in JobReturn.__dataclass_fields__.values()}


def test_fast_pt2e_patterns_build_torchaos_graphs_once() -> None:
    import pytest
    import torch
    import torch.nn.functional as F

    pytest.importorskip("torchao")
    from torchao.quantization.pt2e import qat_utils
    from torchao.quantization.pt2e import utils as pt2e_utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    compat.fast_pt2e_patterns()
    assert qat_utils._get_aten_graph_module_for_pattern is (
        pt2e_utils._get_aten_graph_module_for_pattern
    )

    def bn_train(x, weight, bias, mean, var):
        return F.batch_norm(x, mean, var, weight, bias, training=True)

    example = (torch.randn(1, 1, 3, 3), *(torch.randn(1) for _ in range(4)))
    ours = pt2e_utils._get_aten_graph_module_for_pattern(WrapperModule(bn_train), example)
    again = pt2e_utils._get_aten_graph_module_for_pattern(WrapperModule(bn_train), example)
    strict = compat._STRICT_PATTERN_GRAPH(WrapperModule(bn_train), example)

    def ops(graph_module):
        return [(n.op, str(n.target)) for n in graph_module.graph.nodes if n.op != "placeholder"]

    assert ops(ours) == ops(strict) == ops(again)
    assert ours is not again  # a copy each time: torchao may rewrite what it is given


def test_x86_quantization_annotation_is_the_quantizers_own() -> None:
    import pytest

    pytest.importorskip("torchao")
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    annotation = compat.x86_quantization_annotation(_annotated=True)
    assert isinstance(annotation, QuantizationAnnotation) and annotation._annotated


def test_graph_module_deepcopy_hook_runs_on_copies_of_copies() -> None:
    import copy

    import torch

    graph_module = torch.fx.symbolic_trace(torch.nn.ReLU())
    marked = []
    compat.on_graph_module_deepcopy(graph_module, lambda gm: marked.append(gm))
    first = copy.deepcopy(graph_module)
    second = copy.deepcopy(first)
    assert marked == [first, second]
