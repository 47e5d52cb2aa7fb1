"""ModelCost: the tested model's latency, size, parameters and MACs, logged as test metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimlab.compression.measure import count_macs, size_on_disk
from slimlab.models.base import count_parameters
from slimlab.train import optimized_metric, train
from slimlab.utils.errors import ConfigError

COST = ["+callbacks.model_cost._target_=slimlab.compression.model_cost.ModelCost"]


def test_the_tested_model_is_measured_and_reaches_metrics_json(compose_cfg) -> None:
    cfg = compose_cfg(["debug=fdr", *COST, "+callbacks.model_cost.repeats=3"])
    metrics, objects = train(cfg)
    net = objects["model"].net
    assert float(metrics["test/latency_ms"]) > 0
    assert float(metrics["test/size_mb"]) == pytest.approx(size_on_disk(net) / 1e6, rel=1e-6)
    assert float(metrics["test/params"]) == count_parameters(net)
    example = objects["model"].example_input_array
    assert float(metrics["test/macs"]) == count_macs(net, example[:1])
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert summary["test"]["latency_ms"] == pytest.approx(float(metrics["test/latency_ms"]))
    # a list of objectives, as a multi-objective search asks for them
    with_list = cfg.copy()
    with_list.optimized_metric = ["test/acc", "test/latency_ms", "test/size_mb"]
    values = optimized_metric(with_list, metrics)
    assert values == [float(metrics[k]) for k in with_list.optimized_metric]


@pytest.mark.parametrize("key", ["batch_size", "repeats", "threads"])
def test_bad_settings_fail_before_training(key: str) -> None:
    from slimlab.compression.model_cost import ModelCost

    with pytest.raises(ConfigError, match=f"callbacks.model_cost.{key}=0 is out of range"):
        ModelCost(**{key: 0})
