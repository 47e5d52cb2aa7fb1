"""TextClassifier with a tiny random Hugging Face BERT: trains on the generated topic task and
on generated AG News files, and its checkpoint reloads with the same test metrics."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from conftest import compose_config, run_cli
from generated_data import write_ag_news
from slimlab.data import ag_news
from slimlab.data.download import md5_of
from slimlab.models import TextClassifier, load_module
from slimlab.train import train
from slimlab.utils.compose import QUIET
from slimlab.utils.errors import find_config_error

TINY = ["experiment=text_tiny_bert", *QUIET, "logger=csv", "callbacks.early_stopping=null"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One short run of experiment=text_tiny_bert on a small generated task, shared."""
    out = tmp_path_factory.mktemp("text_tiny_bert")
    cfg = compose_config(
        out,
        [*TINY, "data.num_classes=2", "data.num_train=400", "data.num_test=100"]
        + ["data.batch_size=16", "trainer.max_epochs=4"],
    )
    metrics, objects = train(cfg)
    GlobalHydra.instance().clear()
    best = objects["trainer"].checkpoint_callback.best_model_path
    return {"cfg": cfg, "metrics": metrics, "objects": objects, "best": best, "out": out}


def test_tiny_bert_learns_the_topic_task(run) -> None:
    assert float(run["metrics"]["test/acc"]) >= 0.85  # 2 topics: chance is 0.5
    summary = json.loads((Path(run["cfg"].paths.output_dir) / "metrics.json").read_text())
    assert summary["params"] == sum(p.numel() for p in run["objects"]["model"].net.parameters())
    assert summary["test"]["acc"] == pytest.approx(float(run["metrics"]["test/acc"]))


def test_example_input_is_token_ids_and_mask_of_the_real_length(run) -> None:
    model = run["objects"]["model"]
    example = model.example_input_array
    assert set(example) == {"input_ids", "attention_mask"}
    assert all(v.dtype == torch.long and v.shape == (1, 32) for v in example.values())
    model.eval()
    with torch.no_grad():
        assert model(**example).shape == (1, 2)  # logits, taken from the HF output object


def test_checkpoint_reloads_into_the_same_test_metrics(run) -> None:
    checkpoint = torch.load(run["best"], weights_only=True)  # plain data only
    assert checkpoint["hyper_parameters"]["net"]["config"]["model_type"] == "bert"
    model = load_module(run["best"])
    assert isinstance(model, TextClassifier)
    trainer, datamodule = run["objects"]["trainer"], run["objects"]["datamodule"]
    reloaded = trainer.test(model=model, datamodule=datamodule, verbose=False)[0]
    for key in ("test/acc", "test/loss"):
        assert reloaded[key] == pytest.approx(float(run["metrics"][key]), abs=1e-5), key


@pytest.mark.slow
def test_eval_cli_reproduces_the_test_metrics(run, tmp_path) -> None:
    run_cli("eval.py", [f"ckpt_path={run['best']}", "callbacks=none"], tmp_path)
    (summary,) = (tmp_path / "logs").glob("eval/**/metrics.json")
    tested = json.loads(summary.read_text())["test"]
    assert tested["acc"] == pytest.approx(float(run["metrics"]["test/acc"]), abs=1e-5)
    assert tested["loss"] == pytest.approx(float(run["metrics"]["test/loss"]), abs=1e-5)


def test_trains_on_generated_ag_news_files(tmp_path, monkeypatch) -> None:
    data_dir = write_ag_news(tmp_path / "ag_news", n_train=160, n_test=40)
    for name in ag_news.MD5:  # the generated files stand in for the published ones
        monkeypatch.setitem(ag_news.MD5, name, md5_of(data_dir / name))
    cfg = compose_config(
        tmp_path,
        [
            *TINY,
            "data=ag_news",
            f"data.data_dir={data_dir}",
            "data.download=false",
            "data.max_length=24",
            "data.batch_size=16",
            "model.num_classes=4",
            "trainer.max_epochs=4",
        ],
    )
    metrics, objects = train(cfg)
    assert objects["model"].example_input_array["input_ids"].shape == (1, 24)
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0
    with open(Path(cfg.paths.output_dir) / "csv" / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0]  # it learns from the CSV texts


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.num_classes=3"], r"model.num_classes=3 does not match the data's 4 classes"),
        (["data.max_length=200"], r"model.max_length=200 is longer than the net's 128"),
        (["model.net.config.model_type=nope"], r"model.net.config.model_type='nope' is not"),
        (["model.max_length=16"], r"model.max_length=16 does not match data.max_length=32"),
    ],
)
def test_mismatches_fail_before_training(compose_cfg, overrides, message) -> None:
    cfg = compose_cfg([*TINY, "data.num_train=40", *overrides])
    with pytest.raises(Exception) as info:  # noqa: PT011 (Hydra may wrap the ConfigError)
        train(cfg)
    error = find_config_error(info.value)
    assert error is not None and re.search(message, str(error)), info.value
    assert not list(Path(cfg.paths.output_dir).glob("checkpoints/*.ckpt"))


@pytest.mark.slow
def test_a_pretrained_folder_brings_its_own_tokenizer(tmp_path) -> None:
    """The named-model path offline: a model and its WordPiece tokenizer saved with
    save_pretrained, given as pretrained_model_name_or_path; data.tokenizer follows it."""
    from transformers import BertTokenizer

    from slimlab.data.synthetic_text import FILLER, TOPICS
    from slimlab.models.nets import hf_sequence_classifier

    folder = tmp_path / "tiny-bert"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *FILLER]
    words += [w for topic in TOPICS.values() for w in topic]
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    config = {"model_type": "bert", "vocab_size": len(words), "hidden_size": 32}
    config |= {"num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    hf_sequence_classifier(config=config).save_pretrained(folder)
    cfg = compose_config(
        tmp_path,
        [*TINY, f"model.net.pretrained_model_name_or_path={folder}", "model.net.config=null"]
        + ["data.num_classes=2", "data.num_train=400", "data.batch_size=16"]
        + ["trainer.max_epochs=4"],
    )
    assert cfg.data.tokenizer == str(folder)
    metrics, objects = train(cfg)
    batch = next(iter(objects["datamodule"].test_dataloader()))
    assert (batch["input_ids"][:, 0] == words.index("[CLS]")).all()  # WordPiece, not words
    assert objects["datamodule"].vocabulary is None
    assert float(metrics["test/acc"]) >= 0.85
