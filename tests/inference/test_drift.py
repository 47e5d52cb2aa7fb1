"""Drift gauges: PSI of the predicted-class mix and the input shift score, on known samples."""

from __future__ import annotations

import numpy as np
import pytest

from slimlab.inference.drift import DriftMonitor, psi

REFERENCE = {
    "class_prior": [0.25, 0.25, 0.25, 0.25],
    "input_axis": "channel",
    "input_mean": [4.0],
    "input_std": [2.0],
}


def test_psi_is_zero_for_the_same_mix_and_grows_with_the_shift() -> None:
    prior = np.full(4, 0.25)
    assert psi(prior, prior) == pytest.approx(0.0)
    mild, strong = psi([0.3, 0.3, 0.2, 0.2], prior), psi([0.85, 0.05, 0.05, 0.05], prior)
    assert 0 < mild < 0.1 < 0.2 < strong
    assert np.isfinite(psi([1.0, 0.0, 0.0, 0.0], prior))  # an empty class stays finite


def images(rng: np.random.Generator, n: int, mean: float, std: float) -> np.ndarray:
    return rng.normal(mean, std, size=(n, 1, 8, 8))


def test_monitor_reads_near_zero_on_reference_traffic_and_moves_when_it_shifts() -> None:
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(REFERENCE, num_classes=4, window=400)
    assert monitor.prediction_psi() is None and monitor.input_shift() is None  # no data yet
    for _ in range(8):
        monitor.update(rng.integers(0, 4, size=50), images(rng, 50, 4.0, 2.0))
    assert monitor.count == 400
    assert monitor.prediction_psi() < 0.05
    assert monitor.input_shift() < 0.05

    # the window rolls: after a window of brighter images predicted as class 0, both move
    for _ in range(8):
        monitor.update(np.zeros(50, dtype=int), images(rng, 50, 10.0, 2.0))
    assert monitor.prediction_psi() > 1.0
    assert monitor.input_shift() == pytest.approx(3.0, abs=0.1)  # (10 - 4) / 2 std

    # a change of spread alone: same mean, 3x the std -> |ln 3|
    for _ in range(8):
        monitor.update(rng.integers(0, 4, size=50), images(rng, 50, 4.0, 6.0))
    assert monitor.input_shift() == pytest.approx(np.log(3.0), abs=0.1)


def test_monitor_without_input_statistics_still_reports_the_prediction_mix() -> None:
    monitor = DriftMonitor({"class_prior": [0.5, 0.5]}, num_classes=2, window=10)
    monitor.update(np.array([0, 0, 0, 1]), None)
    assert monitor.input_shift() is None
    assert monitor.prediction_psi() == pytest.approx(psi([0.75, 0.25], [0.5, 0.5]))


def test_a_reference_for_another_number_of_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="3 classes, the model 4"):
        DriftMonitor({"class_prior": [0.2, 0.3, 0.5]}, num_classes=4)
