"""Attention-head pruning on our ViT and on a tiny random Hugging Face BERT: whole heads go,
each attention module's head count follows its q/k/v width, the MLPs narrow, the token width
stays, the forward output keeps its shape, and a checkpoint replays the structure and gives the
same logits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import NO_BARS, QUIET, compose_config
from slimlab.compression.heads import find_attention, head_counts, qkv_width
from slimlab.compression.measure import count_params
from slimlab.compression.pruning import (
    StructuredPruning,
    build_pruner,
    find_head,
    layer_widths,
    prune_step,
    residual_writers,
    restore_pruning,
    steps_done,
)
from slimlab.models import ImageClassifier
from slimlab.models.base import call_net, load_module, logits_of
from slimlab.models.nets import VisionTransformer
from slimlab.train import train
from slimlab.utils.errors import ConfigError, find_config_error
from slimlab.utils.instantiate import instantiate_callbacks

IMAGES = torch.randn(3, 1, 8, 8)
TOKENS = {
    "input_ids": torch.randint(0, 40, (3, 12)),
    "attention_mask": torch.ones(3, 12, dtype=torch.long),
}


def tiny_vit() -> torch.nn.Module:
    return VisionTransformer(dim=32, depth=2, heads=4, mlp_ratio=2.0, dropout=0.0)


def tiny_bert() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def assert_heads_consistent(net: torch.nn.Module, heads: int | dict[str, int]) -> None:
    """Every attention module has `heads` heads (or `heads[name]`) and q/k/v width == heads *
    head width."""
    for name, layout in find_attention(net).items():
        module = net.get_submodule(name)
        expected = heads if isinstance(heads, int) else heads[name]
        assert getattr(module, layout.heads) == expected, name
        assert qkv_width(module, layout) == expected * getattr(module, layout.head_dim), name


@pytest.mark.parametrize(
    ("build", "example", "token_width_layer", "mlp_layer"),
    [
        (tiny_vit, IMAGES, "patch_embed", "blocks.0.mlp.fc1"),
        (
            tiny_bert,
            TOKENS,
            "bert.encoder.layer.0.output.dense",
            "bert.encoder.layer.0.intermediate.dense",
        ),
    ],  # fmt: skip
    ids=["vit", "bert"],
)
def test_half_the_heads_and_mlp_go_and_the_structure_replays(
    build, example, token_width_layer, mlp_layer
) -> None:
    torch.manual_seed(0)
    net = build().eval()
    dense_widths = layer_widths(net)
    keep = [*residual_writers(net, example), find_head(net, example)]
    assert token_width_layer in keep
    pruner = build_pruner(net, example, "l1", "local", None, keep, 0.5, 1, head_amount=0.5)
    history = prune_step(pruner)

    assert_heads_consistent(net, heads=2)  # 4 heads -> 2, each as wide as before
    widths = layer_widths(net)
    assert widths[mlp_layer] == dense_widths[mlp_layer] // 2
    assert widths[token_width_layer] == dense_widths[token_width_layer]  # token width kept
    with torch.no_grad():
        logits = logits_of(call_net(net, example))
    assert logits.shape == (3, dense_widths[keep[-1]])

    # a fresh network replays the recorded structure, takes the weights, gives the same logits
    fresh = build().eval()
    entry = {"history": history, "widths": widths, "heads": head_counts(net)}
    restore_pruning(SimpleNamespace(net=fresh, example_input_array=example), entry)
    assert_heads_consistent(fresh, heads=2)
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(logits_of(call_net(fresh, example)), logits)


def test_head_dims_narrow_alike_when_no_head_is_removed() -> None:
    torch.manual_seed(0)
    net = tiny_vit().eval()
    keep = [*residual_writers(net, IMAGES), "head"]
    prune_step(build_pruner(net, IMAGES, "l1", "local", None, keep, amount=0.5, steps=1))
    for name, layout in find_attention(net).items():
        module = net.get_submodule(name)
        assert module.num_heads == 4 and module.head_dim == 4  # 4 heads of 8 -> 4 heads of 4
        assert qkv_width(module, layout) == 16
    assert net(IMAGES).shape == (3, 10)


def test_heads_go_along_the_schedule_over_several_steps() -> None:
    # half of 4 heads in 4 steps: 3, 3, 2, 2 heads left (torch-pruning alone: 3, 2, 1, 0)
    torch.manual_seed(0)
    net = tiny_vit().eval()
    keep = [*residual_writers(net, IMAGES), "head"]
    pruner = build_pruner(net, IMAGES, "l1", "local", None, keep, 0.5, 4, head_amount=0.5)
    left = []
    for _ in range(4):
        prune_step(pruner)
        left.append(sorted(set(head_counts(net).values())))
    assert left == [[3], [3], [2], [2]]
    assert_heads_consistent(net, heads=2)
    assert all(net.get_submodule(name).head_dim == 8 for name in find_attention(net))
    assert net(IMAGES).shape == (3, 10)


VIT_PRUNE = [
    *NO_BARS,
    "experiment=digits_vit",
    "compression=prune",
    "compression.prune.head_amount=0.5",
    "compression.prune.report.latency=false",
    "compression.prune.round_to=null",
    "model.net.dim=32",
    "model.net.depth=2",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
]
BERT_PRUNE = [
    *NO_BARS,
    "experiment=text_tiny_bert",
    "compression=prune",
    "compression.prune.head_amount=0.5",
    "compression.prune.report.latency=false",
    "compression.prune.round_to=null",
    "data.num_train=64",
    "data.num_test=32",
    "trainer.max_epochs=2",
]


@pytest.mark.parametrize("overrides", [VIT_PRUNE, BERT_PRUNE], ids=["vit", "bert"])
def test_training_run_prunes_heads_and_its_checkpoint_reloads(
    tmp_path: Path, overrides: list[str]
) -> None:
    cfg = compose_config(tmp_path, overrides)
    _, objects = train(cfg)
    GlobalHydra.instance().clear()
    net = objects["model"].net.eval()
    counts = head_counts(net)
    assert counts and all(h < 4 for h in counts.values())  # heads really went
    assert_heads_consistent(net, heads=next(iter(counts.values())))
    best = objects["trainer"].checkpoint_callback.best_model_path
    (entry,) = [e for e in torch.load(best, weights_only=True)["slimlab"]["structure"]]
    assert entry["heads"] == counts
    loaded = load_module(best).net.eval()
    assert head_counts(loaded) == counts
    example = objects["model"].example_input_array
    with torch.no_grad():
        torch.testing.assert_close(
            logits_of(call_net(loaded, example)), logits_of(call_net(net, example))
        )


@pytest.mark.parametrize("ranking", ["local", "global"])
def test_resume_between_head_pruning_steps_continues_exactly(tmp_path: Path, ranking: str) -> None:
    # 2 blocks of 4 heads, half of the heads removed in 2 steps (at epochs 1 and 2); one run
    # stops after epoch 1, between the steps, and is resumed from its last.ckpt
    common = [
        *QUIET,
        "experiment=digits_vit",
        "compression=prune",
        "compression.prune.head_amount=0.5",
        "compression.prune.steps=2",
        "compression.prune.start_epoch=1",
        "compression.prune.end_epoch=3",
        f"compression.prune.ranking={ranking}",
        "compression.prune.round_to=null",
        "compression.prune.report.latency=false",
        "model.net.dim=32",
        "model.net.depth=2",
        "model.net.heads=4",
        "model.net.dropout=0.0",
        "model.scheduler.T_max=4",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "test=false",
    ]

    def run(name: str, *extra: str) -> tuple[dict, ImageClassifier]:
        cfg = compose_config(tmp_path / name, [*common, *extra])
        _, objects = train(cfg)
        GlobalHydra.instance().clear()
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        model = objects["model"]
        assert_heads_consistent(model.net, head_counts(model.net))
        for name in find_attention(model.net):  # whole heads went: each is as wide as before
            assert model.net.get_submodule(name).head_dim == 8, name
        return torch.load(last, weights_only=True), model

    def heads_per_step(model: ImageClassifier) -> list[dict[str, int]]:
        return [e["heads"] for e in model.structure_log if e["kind"] == "prune"]

    straight, straight_model = run("straight", "trainer.max_epochs=4")
    first, first_model = run("first", "trainer.max_epochs=2")
    assert heads_per_step(first_model) == heads_per_step(straight_model)[:1]  # between steps
    first_last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    resumed, resumed_model = run("resumed", "trainer.max_epochs=4", f"ckpt_path={first_last}")

    assert steps_done(resumed_model) == 2, "no step repeated, none forgotten"
    assert heads_per_step(resumed_model) == heads_per_step(straight_model)
    counts = head_counts(resumed_model.net)
    assert counts == head_counts(straight_model.net)
    assert sum(counts.values()) == 4  # half of the 8 heads, as one step would leave
    if ranking == "local":
        assert counts == {"blocks.0.attn": 2, "blocks.1.attn": 2}
    assert count_params(resumed_model.net) == count_params(straight_model.net)
    assert resumed["global_step"] == straight["global_step"]
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, msg=name)

    if ranking == "local":  # a checkpoint of an earlier SlimLab: no dense head counts in it
        old = torch.load(first_last, weights_only=True)
        (progress,) = [
            state["progress"]
            for state in old["callbacks"].values()
            if isinstance(state, dict) and state.get("progress")
        ]
        del progress["dense_heads"], progress["total_heads"]
        torch.save(old, tmp_path / "old.ckpt")
        with pytest.raises(Exception) as info:
            run("old", "trainer.max_epochs=4", f"ckpt_path={tmp_path / 'old.ckpt'}")
        assert "did not record the dense head counts" in str(find_config_error(info.value))


def test_bad_head_settings_name_the_key(compose_cfg) -> None:
    cfg = compose_cfg(["experiment=digits_vit_prune", "compression.prune.head_amount=1.5"])
    with pytest.raises(Exception) as info:
        instantiate_callbacks(cfg.compression)
    error = find_config_error(info.value)
    assert isinstance(error, ConfigError)
    assert "compression.prune.head_amount=1.5 is out of range" in str(error)


def test_head_amount_needs_the_channels_target() -> None:
    with pytest.raises(ConfigError, match=r"head_amount=0.5 needs target=channels"):
        StructuredPruning(head_amount=0.5, target="params", report=False)


def test_head_amount_on_a_network_without_attention_fails_before_training() -> None:
    model = ImageClassifier(
        net={"_target_": "slimlab.models.nets.SmallCNN"},
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
    )
    callback = StructuredPruning(head_amount=0.5, report=False)
    with pytest.raises(ConfigError, match=r"head_amount=0.5 needs attention modules"):
        callback.setup(L.Trainer(max_epochs=2, logger=False), model, "fit")


def test_global_ranking_that_empties_a_module_of_heads_stops_with_the_fix() -> None:
    torch.manual_seed(0)
    net = VisionTransformer(dim=32, depth=3, heads=4, mlp_ratio=1.0, dropout=0.0)
    with torch.no_grad():  # the first block's heads rank lowest of all
        net.blocks[0].attn.qkv.weight.mul_(0.01)
    x = torch.zeros(1, 1, 8, 8)
    pruner = build_pruner(net, x, "l1", "global", None, ["head"], 0.5, 1, head_amount=0.9)
    with pytest.raises(ConfigError, match=r"ranking=global removed every attention head of \["):
        prune_step(pruner)
