"""Structured pruning: the network really shrinks and keeps training, the optimizer follows,
pruned checkpoints reload and eval reproduces, resume mid-schedule, DDP, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from conftest import NO_BARS, ROOT, compose_config, run_cli, run_folders
from slimlab.compression.measure import count_macs, count_params
from slimlab.compression.pruning import (
    StructuredPruning,
    apply_history,
    build_pruner,
    layer_widths,
    prune_step,
    prune_until,
    steps_done,
)
from slimlab.eval import evaluate
from slimlab.models import ImageClassifier
from slimlab.models.base import load_module
from slimlab.models.nets import CifarResNet, SmallCNN
from slimlab.train import train
from slimlab.utils.errors import ConfigError, find_config_error

PRUNE = [*NO_BARS, "experiment=digits_prune", "compression.prune.report.latency=false"]
X = torch.zeros(1, 1, 8, 8)


def prune_entries(module) -> list[dict]:
    return [e for e in module.structure_log if e["kind"] == "prune"]


def epoch_metric(csv_path: Path, name: str) -> dict[int, float]:
    """{epoch: value} of an epoch-level metric from the CSV logger's file."""
    with open(csv_path) as f:
        return {int(r["epoch"]): float(r[name]) for r in csv.DictReader(f) if r.get(name)}


# -- bad input: errors that name the key, before training ---------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("amount=1.5", "compression.prune.amount=1.5 is out of range: give a fraction in (0, 1)"),
        ("amount=0", "compression.prune.amount=0 is out of range"),
        ("importance=fisher", "compression.prune.importance='fisher' is unknown"),
        ("ranking=sideways", "compression.prune.ranking='sideways' is unknown"),
        ("target=flops", "compression.prune.target='flops' is unknown"),
        ("steps=0", "compression.prune.steps=0 is out of range"),
        ("round_to=0", "compression.prune.round_to=0 is out of range"),
        ("end_epoch=1", "compression.prune.end_epoch=1 is not after start_epoch=1"),
        ("regularization=0.001", "regularization=0.001 needs importance=bn_scale"),
        ("report.repeats=0", "compression.prune.report.repeats=0 is out of range"),
    ],
)
def test_bad_settings_name_the_key(compose_cfg, override: str, message: str) -> None:
    cfg = compose_cfg(["compression=prune", f"compression.prune.{override}", "debug=fdr"])
    with pytest.raises(Exception) as info:
        train(cfg)
    error = find_config_error(info.value)
    assert isinstance(error, ConfigError), info.value
    assert message in str(error)


def test_taylor_needs_a_trained_batch_first() -> None:
    with pytest.raises(ConfigError, match="start_epoch=0 leaves importance=taylor no gradients"):
        StructuredPruning(importance="taylor", start_epoch=0)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x * mask).mean((2, 3)))


class HeadOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


@pytest.mark.parametrize(
    ("net", "kwargs", "message"),
    [
        (
            SmallCNN(widths=(8, 16)),
            {"ignored_layers": ["features.9"]},
            "'features.9' is not a layer",
        ),
        # issue 9: a net that does not run on its example input is a contract error, named as
        # such at setup (it used to surface as a torch-pruning tracing failure)
        (TwoInputs(), {}, "fails on its example_input_array"),
        (HeadOnly(), {}, "has no channels compression.prune may remove"),
        (HeadOnly(), {"importance": "bn_scale"}, "needs batch-norm layers"),
        (SmallCNN(widths=(8, 16)), {"start_epoch": 3}, "start_epoch=3 is not before"),
        (SmallCNN(widths=(8, 16)), {"target": "macs", "amount": 0.99}, "is out of reach"),
    ],
)
def test_bad_network_fails_when_fit_starts(net: nn.Module, kwargs: dict, message: str) -> None:
    module = ImageClassifier(net={"_target_": "torch.nn.Identity"}, optimizer={"lr": 0.01})
    module.net = net
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False)
    with pytest.raises(ConfigError, match=message):
        StructuredPruning(**kwargs).setup(trainer, module, "fit")


# -- the pruning functions ---------------------------------------------------------------------
def test_prune_shrinks_the_network_and_its_history_replays() -> None:
    torch.manual_seed(0)
    net = SmallCNN(widths=(32, 64, 128))
    dense_macs = count_macs(net, X)
    pruner = build_pruner(net, X, "l1", "local", 8, ["classifier"], amount=0.5, steps=1)
    history = prune_step(pruner)
    assert layer_widths(net) == {
        "features.0.0": 16,
        "features.2.0": 32,
        "features.4.0": 64,
        "classifier": 10,
    }
    assert net(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    assert count_macs(net, X) / dense_macs < 0.3  # half the channels: about a quarter the MACs
    # the history is plain data; a freshly built network replays it and takes the weights
    assert all(isinstance(n, str) and isinstance(i[0], int) for n, _, i in history)
    fresh = SmallCNN(widths=(32, 64, 128))
    apply_history(fresh, X, history)
    fresh.load_state_dict(net.state_dict())
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), net.eval()(x))


@pytest.mark.parametrize(("metric", "ranking"), [("macs", "global"), ("params", "local")])
def test_params_and_macs_targets_are_met(metric: str, ranking: str) -> None:
    net = CifarResNet(depth=8, width=16)
    x = torch.zeros(1, 3, 32, 32)
    measure = (lambda n: count_params(n)) if metric == "params" else (lambda n: count_macs(n, x))
    dense = measure(net)
    pruner = build_pruner(net, x, "l2", ranking, round_to=None, ignored_layers=["classifier"])
    prune_until(pruner, net, x, metric, goal=0.25 * dense)
    assert 0.2 * dense <= measure(net) <= 0.25 * dense, (metric, measure(net) / dense)


@pytest.mark.parametrize("option", ["prune", "prune_iterative", "prune_slim"])
def test_fast_dev_run_runs_the_whole_schedule_after_its_one_batch(compose_cfg, option) -> None:
    overrides = ["experiment=digits_prune", f"compression={option}", "debug=fdr"]
    cfg = compose_cfg([*overrides, "compression.prune.report.latency=false"])
    metrics, objects = train(cfg)
    model = objects["model"]
    assert steps_done(model) == cfg.compression.prune.steps
    assert count_params(model.net) < 0.8 * count_params(SmallCNN())
    assert "test/acc" in metrics


# -- training runs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_pruned_network_keeps_training_with_a_rebuilt_optimizer(compose_cfg) -> None:
    cfg = compose_cfg(
        [
            *PRUNE,
            "model.net.widths=[16,32,64]",
            "trainer.max_epochs=4",
            "trainer.limit_train_batches=8",
            "compression.prune.start_epoch=2",
            "callbacks.model_checkpoint.save_top_k=-1",
        ]
    )
    _, objects = train(cfg)
    model, trainer = objects["model"], objects["trainer"]
    out = Path(cfg.paths.output_dir)

    # really smaller: half the channels (multiples of 8), about a quarter of the MACs
    widths = layer_widths(model.net)
    assert [widths[f"features.{i}.0"] for i in (0, 2, 4)] == [8, 16, 32]
    report = json.loads((out / "metrics.json").read_text())["compression"]["pruning"]
    assert report["macs_ratio"] < 0.3 and report["params_ratio"] < 0.3, report
    assert report["after"]["macs"] == count_macs(model.net, X)
    assert "val_acc" in report["before"] and "val_acc" in report["after"]

    # the optimizer holds exactly the live parameters, and the LR schedule went on
    optimizer = trainer.optimizers[0]
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(held) == len({id(p) for p in held})
    assert {id(p) for p in held} == {id(p) for p in model.parameters()}
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4  # not restarted at the step

    # the loss keeps falling after the step, and every pruned tensor kept learning
    loss = epoch_metric(out / "csv" / "metrics.csv", "train/loss")
    assert loss[3] < loss[2], loss
    first = torch.load(out / "checkpoints" / "epoch_002.ckpt", weights_only=True)["state_dict"]
    last = torch.load(out / "checkpoints" / "epoch_003.ckpt", weights_only=True)["state_dict"]
    for name, value in first.items():
        if name.startswith("net.") and value.is_floating_point() and "running" not in name:
            assert not torch.equal(value, last[name]), f"{name} stopped learning"

    # widths and params went to the loggers at the step
    with open(out / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("prune/params")]
    assert len(rows) == 1 and int(float(rows[0]["prune/width/features.4.0"])) == 32


@pytest.mark.slow
def test_best_checkpoint_is_pruned_and_eval_reproduces_the_test(tmp_path: Path) -> None:
    # a harsh late step: the dense epochs score higher than the pruned one, yet the tested
    # "best" checkpoint must be a pruned one (a dense one cannot load into the pruned module)
    cfg = compose_config(
        tmp_path,
        [
            *PRUNE,
            "trainer.max_epochs=3",
            "compression.prune.start_epoch=2",
            "compression.prune.amount=0.8",
            "compression.prune.importance=random",
        ],
    )
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    val_acc = epoch_metric(out / "csv" / "metrics.csv", "val/acc")
    assert max(val_acc[0], val_acc[1]) > val_acc[2], val_acc  # the case this test is about
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["best_epoch"] == 2
    # the report sets the dense network at its best epoch against the pruned one at its best
    report = summary["compression"]["pruning"]
    assert report["before"]["val_acc"] == pytest.approx(max(val_acc[0], val_acc[1]))
    assert report["after"]["val_acc"] == pytest.approx(val_acc[2])
    best = summary["best_checkpoint"]
    checkpoint = torch.load(best, weights_only=True)  # no pickled code
    (entry,) = [e for e in checkpoint["slimlab"]["structure"] if e["kind"] == "prune"]
    assert entry["widths"] == layer_widths(objects["model"].net)

    eval_cfg = compose_config(tmp_path / "eval", [f"ckpt_path={best}"], config_name="eval")
    eval_metrics, eval_objects = evaluate(eval_cfg)
    for key in ("test/acc", "test/loss"):
        assert abs(float(eval_metrics[key]) - float(metrics[key])) < 1e-5, key
    loaded = load_module(best)
    assert layer_widths(loaded.net) == layer_widths(objects["model"].net)
    assert count_params(eval_objects["model"].net) == summary["params"]


@pytest.mark.slow
def test_resume_mid_schedule_continues_exactly(tmp_path: Path) -> None:
    # two Taylor steps towards half the MACs, ranked globally, at epochs 1 and 2
    common = [
        *PRUNE,
        "compression=prune_iterative",
        "compression.prune.steps=2",
        "compression.prune.start_epoch=1",
        "compression.prune.end_epoch=3",
        "compression.prune.report.latency=false",
        "model.net.widths=[16,32,64]",
        "model.scheduler.T_max=4",
        "trainer.limit_train_batches=6",
        "test=false",
    ]

    def run(name: str, *extra: str) -> tuple[dict, dict]:
        cfg = compose_config(tmp_path / name, [*common, *extra])
        _, objects = train(cfg)
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        return torch.load(last, weights_only=True), objects

    straight, straight_objects = run("straight", "trainer.max_epochs=4")
    first, _ = run("first", "trainer.max_epochs=2")
    assert len([e for e in first["slimlab"]["structure"] if e["kind"] == "prune"]) == 1
    (state,) = [v for k, v in first["callbacks"].items() if "StructuredPruning" in k]
    assert "taylor_grads" in state, "the gradients the pending step ranks by are checkpointed"
    first_path = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    resumed, resumed_objects = run("resumed", "trainer.max_epochs=4", f"ckpt_path={first_path}")

    assert [e["widths"] for e in prune_entries(resumed_objects["model"])] == [
        e["widths"] for e in prune_entries(straight_objects["model"])
    ]
    assert steps_done(resumed_objects["model"]) == 2, "no step repeated, none forgotten"
    assert resumed["global_step"] == straight["global_step"]
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, msg=name)
    macs = count_macs(straight_objects["model"].net, X)
    dense = count_macs(SmallCNN(widths=(16, 32, 64)), X)
    assert macs <= 0.5 * dense


@pytest.mark.slow
def test_cifar10_resnet56_prune_on_generated_files(compose_cfg, tmp_path: Path) -> None:
    from generated_data import write_cifar10

    data_dir = write_cifar10(tmp_path / "cifar10")
    cfg = compose_cfg(
        [
            *NO_BARS,
            "experiment=cifar10_resnet56_prune",
            f"data.data_dir={data_dir}",
            "data.download=false",
            "data.batch_size=8",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "compression.prune.start_epoch=1",
            "compression.prune.report.latency=false",
        ]
    )
    metrics, objects = train(cfg)
    net = objects["model"].net
    assert net.stem[0].out_channels == 8 and net.layers[-1].conv2.out_channels == 32
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    report = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert report["compression"]["pruning"]["macs_ratio"] < 0.3
    assert "test/acc" in metrics


class DumpNet(L.Callback):
    """Test helper for the DDP run: each rank saves its network and DDP's parameters."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ddp = trainer.strategy.model
        wrapped = {id(p) for p in ddp.parameters()} == {id(p) for p in pl_module.parameters()}
        ddp_params = getattr(ddp, "_module_parameters", None)
        if ddp_params is not None:
            wrapped &= {id(p) for p in ddp_params} == {id(p) for p in pl_module.parameters()}
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"net": pl_module.net.state_dict(), "wrapped": wrapped, "type": type(ddp).__name__},
            self.folder / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_ddp_sim_ranks_end_identical_and_rewrapped(tmp_path: Path, monkeypatch) -> None:
    tests = ROOT / "tests"
    monkeypatch.setenv("PYTHONPATH", f"{tests}:{tests / 'compression'}")
    dump = tmp_path / "dump"
    run_cli(
        "train.py",
        [
            *PRUNE,
            "trainer=ddp_sim",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=5",
            "compression=prune_slim",  # BN-scale with an L1 loss term, ranked globally
            "compression.prune.report.latency=false",
            "compression.prune.start_epoch=1",
            "+callbacks.rank_dump._target_=test_pruning.DumpNet",
            f"+callbacks.rank_dump.folder={dump}",
        ],
        tmp_path,
    )
    (folder,) = run_folders(tmp_path)
    rank0, rank1 = (torch.load(dump / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["type"] == rank1["type"] == "DistributedDataParallel"
    assert rank0["wrapped"] and rank1["wrapped"], "DDP must wrap the pruned parameters"
    assert rank0["net"].keys() == rank1["net"].keys()
    for name, value in rank0["net"].items():
        torch.testing.assert_close(rank1["net"][name], value, msg=name, rtol=0, atol=0)
    dense = SmallCNN()
    assert sum(v.numel() for v in rank0["net"].values()) < 0.5 * sum(
        v.numel() for v in dense.state_dict().values()
    )
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["compression"]["pruning"]["steps"] == 1
    assert summary["test"]["acc"] > 0.3
    with open(folder / "csv" / "metrics.csv") as f:
        assert any(r.get("train/prune_sparsity") for r in csv.DictReader(f))


@pytest.mark.slow
def test_cli_bad_amount_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = run_cli(
        "train.py",
        ["experiment=digits_prune", "compression.prune.amount=1.5"],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.count(
            "Error: compression.prune.amount=1.5 is out of range: give a fraction in (0, 1)"
        )
        == 1
    )
