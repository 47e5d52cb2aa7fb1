"""Training and evaluation end to end: fast_dev_run, the default run, eval parity, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from conftest import compose_config, run_cli, run_folders
from slimlab.eval import evaluate
from slimlab.train import main, train
from slimlab.utils.compose import CONFIG_DIR


def test_fast_dev_run_default(compose_cfg) -> None:
    cfg = compose_cfg(["debug=fdr"])
    metrics, objects = train(cfg)
    assert "test/acc" in metrics
    assert objects["trainer"].fast_dev_run


@pytest.mark.parametrize("experiment", ["digits_cnn", "digits_mlp"])
def test_fast_dev_run_digits_experiments(compose_cfg, experiment: str) -> None:
    metrics, _ = train(compose_cfg([f"experiment={experiment}", "debug=fdr"]))
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0


def test_metrics_json_and_checkpoints_are_written(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer.max_epochs=2", "callbacks.rich_progress_bar=null"])
    _, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary) >= {"val", "test", "best_epoch", "params", "wall_time_s"}
    assert summary["params"] == sum(p.numel() for p in objects["model"].net.parameters())
    assert summary["best_epoch"] in (0, 1)
    assert Path(summary["best_checkpoint"]).is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "csv" / "metrics.csv").is_file()
    # every checkpoint opens without unpickling code, hyper-parameters are plain containers
    for ckpt in (out / "checkpoints").glob("*.ckpt"):
        loaded = torch.load(ckpt, weights_only=True)
        assert isinstance(loaded["hyper_parameters"]["net"], dict)
        assert loaded["slimlab"]["run_config"]["data"]["_target_"].endswith("DigitsDataModule")


def test_eval_reproduces_train_test_metrics(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(["trainer.max_epochs=3", "callbacks.rich_progress_bar=null"])
    train_metrics, objects = train(cfg)
    best = objects["trainer"].checkpoint_callback.best_model_path
    eval_cfg = compose_config(tmp_path / "eval", [f"ckpt_path={best}"], config_name="eval")
    eval_metrics, _ = evaluate(eval_cfg)
    for key in ("test/acc", "test/loss"):
        assert abs(float(eval_metrics[key]) - float(train_metrics[key])) < 1e-4, key


def _train_state(cfg_overrides, tmp_path: Path) -> tuple[dict, Path]:
    cfg = compose_config(tmp_path, cfg_overrides)
    train(cfg)
    out = Path(cfg.paths.output_dir)
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True), out


def test_resume_continues_exactly(tmp_path: Path) -> None:
    common = ["callbacks.rich_progress_bar=null", "callbacks.early_stopping=null", "test=false"]
    # T_max fixed: the cosine schedule must not depend on where the first run stopped
    common += ["model.net.dropout=0.2", "data.batch_size=128", "model.scheduler.T_max=4"]
    straight, _ = _train_state([*common, "trainer.max_epochs=4"], tmp_path / "straight")
    first, first_out = _train_state([*common, "trainer.max_epochs=2"], tmp_path / "first")
    assert first["epoch"] == 1
    resumed, _ = _train_state(
        [*common, "trainer.max_epochs=4", f"ckpt_path={first_out / 'checkpoints' / 'last.ckpt'}"],
        tmp_path / "resumed",
    )
    assert resumed["epoch"] == straight["epoch"] == 3
    assert resumed["global_step"] == straight["global_step"]
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, msg=name)
    lr = lambda c: c["optimizer_states"][0]["param_groups"][0]["lr"]  # noqa: E731
    assert lr(resumed) == pytest.approx(lr(straight))


def test_ckpt_path_latest_resumes_newest_run(tmp_path: Path) -> None:
    common = ["callbacks.rich_progress_bar=null", "test=false", "name=latest_demo"]
    cfg = compose_config(tmp_path, [*common, "trainer.max_epochs=1"])
    cfg.paths.output_dir = str(tmp_path / "logs" / "train" / "latest_demo" / "runs" / "a")
    train(cfg)
    cfg2 = compose_config(tmp_path, [*common, "trainer.max_epochs=2", "ckpt_path=latest"])
    _, objects = train(cfg2)
    assert objects["trainer"].current_epoch == 2
    assert objects["trainer"].global_step == 2 * objects["trainer"].num_training_batches


@pytest.mark.slow
def test_default_cli_run_reaches_98_percent_and_evals_identically(tmp_path: Path) -> None:
    run_cli("train.py", [], tmp_path)
    (folder,) = run_folders(tmp_path)
    assert (folder / ".hydra" / "config.yaml").is_file()
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert (folder / "csv" / "metrics.csv").is_file()
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["test"]["acc"] >= 0.98, summary
    assert summary["wall_time_s"] > 0 and summary["params"] > 0
    best = summary["best_checkpoint"]
    assert Path(best).is_file()

    run_cli("eval.py", [f"ckpt_path={best}"], tmp_path)
    eval_summary = json.loads(
        next((tmp_path / "logs" / "eval").glob("**/metrics.json")).read_text()
    )
    assert abs(eval_summary["test"]["acc"] - summary["test"]["acc"]) < 1e-4
    assert abs(eval_summary["test"]["loss"] - summary["test"]["loss"]) < 1e-4


def test_fast_dev_run_mnist_experiment_on_generated_files(compose_cfg, tmp_path: Path) -> None:
    from generated_data import write_mnist

    data_dir = write_mnist(tmp_path / "mnist")
    cfg = compose_cfg(
        ["experiment=mnist_cnn", "debug=fdr", f"data.data_dir={data_dir}", "data.download=false"]
    )
    metrics, _ = train(cfg)
    assert "test/acc" in metrics


def test_fast_dev_run_cifar10_experiment_on_generated_files(compose_cfg, tmp_path: Path) -> None:
    from generated_data import write_cifar10

    data_dir = write_cifar10(tmp_path / "cifar10")
    cfg = compose_cfg(
        [
            "experiment=cifar10_resnet20",
            "debug=fdr",
            f"data.data_dir={data_dir}",
            "data.download=false",
            "data.batch_size=8",
        ]
    )
    metrics, _ = train(cfg)
    assert "test/acc" in metrics


@pytest.mark.slow
def test_torch_compile_option_trains_and_keeps_checkpoint_keys(compose_cfg) -> None:
    cfg = compose_cfg(
        [
            "model=mlp",
            "model.compile=true",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
        ]
    )
    metrics, objects = train(cfg)
    assert float(metrics["test/acc"]) > 0.0
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any("_orig_mod" in key for key in ckpt["state_dict"]), "compiled keys leaked"


def test_precision_64_true_runs(compose_cfg) -> None:
    """The float32 example input used to meet the float64 model in Lightning's model summary."""
    metrics, objects = train(compose_cfg(["debug=fdr", "trainer.precision=64-true"]))
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0
    assert next(objects["model"].net.parameters()).dtype == torch.float64


@pytest.mark.slow
def test_every_precision_the_trainer_config_lists_runs(compose_cfg) -> None:
    text = (CONFIG_DIR / "trainer" / "default.yaml").read_text()
    listed = [p.strip() for p in re.search(r"# one of: ([^(]+)", text).group(1).split(",")]
    assert "64-true" in listed and "32-true" in listed, listed
    for precision in listed:
        metrics, _ = train(compose_cfg(["debug=fdr", f"trainer.precision={precision}"]))
        assert "test/acc" in metrics, precision


def test_resuming_a_finished_run_validates_tests_and_reports_this_runs_files(tmp_path) -> None:
    common = ["callbacks.rich_progress_bar=null", "logger=none", "trainer.max_epochs=1"]
    common.append("trainer.limit_train_batches=4")
    # a last checkpoint kept by Lightning's save_last instead of our model_checkpoint_last
    own_last = ["callbacks.model_checkpoint_last=null"]
    own_last.append("callbacks.model_checkpoint.save_last=true")
    first = compose_config(tmp_path / "first", [*common, *own_last])
    train(first)
    first_out = Path(first.paths.output_dir)
    summary = json.loads((first_out / "metrics.json").read_text())
    assert summary["last_checkpoint"] == str(first_out / "checkpoints" / "last.ckpt")

    # the README's resume command on a finished run (here by its run folder): nothing is
    # left to train, so the run validates and tests the checkpoint and returns the metric
    second = compose_config(tmp_path / "second", [*common, f"ckpt_path={first_out}"])
    value = main(second)
    resumed = json.loads((Path(second.paths.output_dir) / "metrics.json").read_text())
    assert value == pytest.approx(resumed["val"]["acc_best"])
    assert resumed["test"]["acc"] == pytest.approx(summary["test"]["acc"])
    assert "finished 1 epochs and trainer.max_epochs=1" in resumed["nothing_left_to_train"]
    assert resumed["resumed_from"] == str(first_out / "checkpoints" / "last.ckpt")
    assert resumed["last_checkpoint"] is None  # this run wrote none: not the first run's file
    assert resumed["best_checkpoint"] is None and resumed["epochs_run"] == 1


def test_module_in_lightning_hydra_template_style_trains_tests_and_evals(tmp_path) -> None:
    """tests/lht_style.py: Hydra builds net and the optimizer/scheduler partials, and the
    DataModule keeps a ListConfig in its hyper-parameters (the README's walkthrough)."""
    searchpath = f"hydra.searchpath=[file://{Path(__file__).parent / 'configs'}]"
    cfg = compose_config(
        tmp_path,
        [searchpath, "model=lht_style", "data=lht_style", "trainer.max_epochs=2"]
        + ["callbacks.rich_progress_bar=null"],
    )
    metrics, objects = train(cfg)  # the csv logger logs hyper-parameters of the built module
    assert isinstance(objects["model"].net, torch.nn.Module)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["params"] == sum(p.numel() for p in objects["model"].net.parameters())
    saved = torch.load(summary["best_checkpoint"], weights_only=True)
    assert saved["hyper_parameters"]["net"]["_target_"] == "slimlab.models.nets.SmallCNN"
    assert saved["hyper_parameters"]["optimizer"]["_partial_"] is True
    assert saved["datamodule_hyper_parameters"]["train_val_test_split"] == [1257, 270, 270]

    eval_cfg = compose_config(tmp_path / "eval", [f"ckpt_path={out}"], config_name="eval")
    eval_metrics, _ = evaluate(eval_cfg)
    assert float(eval_metrics["test/acc"]) == pytest.approx(float(metrics["test/acc"]), abs=1e-4)
