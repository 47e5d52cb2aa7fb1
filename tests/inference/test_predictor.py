"""Predictor: from a checkpoint and from its ONNX export, the same answers to raw inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from slimlab.inference import InputError, Predictor
from slimlab.utils.errors import ConfigError

pytestmark = pytest.mark.slow  # they share the session's trained and exported digits model


@pytest.fixture(scope="module")
def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return digits.images.astype(np.float32)[:, None], digits.target


def test_checkpoint_and_onnx_predictors_agree_on_raw_inputs(
    digits_ckpt: Path, digits_export: Path, raw_digits
) -> None:
    images, labels = raw_digits
    from_ckpt = Predictor.from_checkpoint(digits_ckpt)
    fp32 = Predictor.from_onnx(digits_export / "model.onnx")
    int8 = Predictor.from_path(digits_export / "model.int8.onnx")
    p_ckpt, p_fp32, p_int8 = (p.predict(images) for p in (from_ckpt, fp32, int8))
    assert p_ckpt.shape == (len(images), 10) and p_ckpt.dtype == np.float32
    np.testing.assert_allclose(p_ckpt.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p_fp32, p_ckpt, atol=1e-4)
    assert (p_int8.argmax(1) == p_ckpt.argmax(1)).mean() >= 0.99
    # raw pixels (0..16) get the training-time answer: on all 1797 raw images the model is as
    # accurate as on its normalised test split
    manifest = json.loads((digits_export / "export.json").read_text())
    test_acc = manifest["artifacts"]["model.onnx"]["parity"]["accuracy_torch"]
    assert (p_ckpt.argmax(1) == labels).mean() > test_acc - 0.05
    # one sample, or a batch of one, is the same answer as inside the batch
    np.testing.assert_allclose(fp32.predict(images[3:4])[0], p_fp32[3], atol=1e-5)


def test_predictors_describe_themselves(digits_ckpt: Path, digits_export: Path) -> None:
    manifest = json.loads((digits_export / "export.json").read_text())
    for predictor, fmt, path in (
        (Predictor.from_checkpoint(digits_ckpt), "checkpoint", digits_ckpt),
        (Predictor.from_onnx(digits_export / "model.onnx"), "onnx", digits_export / "model.onnx"),
        (Predictor.from_onnx(digits_export / "model.int8.onnx"), "onnx-int8", None),
    ):
        assert predictor.input_spec == [{"name": "input", "shape": [1, 8, 8], "dtype": "float32"}]
        assert predictor.num_classes == 10
        assert set(predictor.info) == {
            "name",
            "checkpoint",
            "format",
            "params",
            "size_bytes",
            "version",
        }
        assert predictor.info["format"] == fmt and predictor.info["name"] == "digits_tiny"
        assert predictor.info["params"] == manifest["params"]
        assert predictor.info["checkpoint"] == str(digits_ckpt)
        if path is not None:
            assert predictor.info["size_bytes"] == path.stat().st_size
        assert len(predictor.info["version"]) == 12
        np.testing.assert_allclose(
            predictor.reference["class_prior"], manifest["reference"]["class_prior"]
        )


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (np.zeros((2, 8, 8), np.float32), r"shape \[2, 8, 8\]: give \[batch, 1, 8, 8\]"),
        (np.zeros((0, 1, 8, 8), np.float32), "empty batch"),
        (np.full((1, 1, 8, 8), np.nan, np.float32), "NaN or inf"),
        (np.array([[["a"] * 8] * 8]), "dtype <U1"),
        ({"pixels": np.zeros((1, 1, 8, 8))}, "input 'input' is missing"),
    ],
)
def test_bad_batches_raise_input_error(digits_export: Path, batch, message: str) -> None:
    predictor = Predictor.from_onnx(digits_export / "model.onnx")
    with pytest.raises(InputError, match=message):
        predictor.predict(batch)


def test_bad_paths_are_named(digits_export: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="suffix '.pt2'"):
        Predictor.from_path(digits_export / "model.pt2")
    lonely = tmp_path / "model.onnx"
    lonely.write_bytes((digits_export / "model.onnx").read_bytes())
    with pytest.raises(ConfigError, match="no export.json beside it"):
        Predictor.from_onnx(lonely)
    with pytest.raises(ConfigError, match="does not exist"):
        Predictor.from_checkpoint(tmp_path / "none.ckpt")
