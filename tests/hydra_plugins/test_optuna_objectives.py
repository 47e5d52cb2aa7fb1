"""The objectives of a slimlab_optuna study: `optimized_metric` names them, one direction each."""

from __future__ import annotations

import pytest

from hydra_plugins.slimlab_optuna_sweeper.optuna_sweeper import objective_names, objective_values
from slimlab.utils.errors import ConfigError


def test_one_direction_per_named_metric() -> None:
    names = ["test/acc", "test/latency_ms", "test/size_mb"]
    directions = ["maximize", "minimize", "minimize"]
    assert objective_names(names, directions) == names
    assert objective_names("val/acc_best", ["maximize"]) == ["val/acc_best"]
    assert objective_names(None, ["minimize"]) is None  # a plain Hydra app returning numbers
    with pytest.raises(ConfigError, match=r"names 2 objective\(s\) but hydra.sweeper.direction"):
        objective_names(names[:2], directions)


def test_a_job_returns_one_number_per_objective() -> None:
    assert objective_values([0.9, 1.5, 0.1], 3) == [0.9, 1.5, 0.1]
    with pytest.raises(ValueError, match="expected 3 values"):
        objective_values(0.9, 3)
    with pytest.raises(ValueError, match="NaN"):
        objective_values([0.9, float("nan"), 0.1], 3)
