"""Preprocessing, its inverse, input specs and the drift reference an export records."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits

from slimlab.data import DigitsDataModule, Normalize
from slimlab.data.base import ClassificationDataModule
from slimlab.inference.data import (
    describe_data,
    drift_reference,
    input_spec,
    preprocess,
    to_raw,
)


def test_digits_preprocessing_turns_raw_pixels_into_training_inputs() -> None:
    dm = DigitsDataModule(seed=7)
    described = describe_data(dm, num_classes=10)
    pre = described["preprocessing"]
    assert pre["dtype"] == "float32" and pre["scale"] == 1.0
    # the raw 0..16 images, preprocessed, are exactly what the network trained on
    train_inputs = torch.stack([x for x, _ in dm.data_train])
    raw = load_digits().images.astype(np.float32)[:, None]
    model_space = preprocess(raw, pre)
    matches = np.isclose(model_space[:, None], train_inputs.numpy()[None, :5], atol=1e-5)
    assert matches.all(axis=(2, 3, 4)).any(axis=0).all()  # each training image is found
    # the drift reference describes the raw training images
    reference = described["reference"]
    train_raw = to_raw(train_inputs, pre)
    assert np.isclose(reference["input_mean"][0], float(train_raw.mean()), atol=1e-4)
    assert np.isclose(reference["input_std"][0], float(train_raw.std(unbiased=False)), atol=1e-4)
    assert reference["input_axis"] == "channel" and len(reference["class_prior"]) == 10
    assert abs(sum(reference["class_prior"]) - 1) < 1e-9 and min(reference["class_prior"]) > 0.05


def test_uint8_images_are_scaled_then_normalised_per_channel() -> None:
    class Images(ClassificationDataModule):
        input_shape = (3, 2, 2)

    normalize = Normalize(mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5])
    pre = {**Images(normalize=normalize).preprocessing(), "dtype": "uint8", "scale": 1 / 255}
    raw = np.random.default_rng(0).integers(0, 256, size=(4, 3, 2, 2), dtype=np.uint8)
    expected = normalize(torch.from_numpy(raw)).numpy()
    np.testing.assert_allclose(preprocess(raw, pre), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_raw(torch.from_numpy(expected), pre).numpy(), raw, atol=1e-3)


def test_reference_is_per_channel_for_images_and_per_feature_for_vectors() -> None:
    identity = {"dtype": "float32", "scale": 1.0, "mean": [0.0], "std": [1.0]}
    x = torch.stack([torch.full((2, 3), 1.0), torch.full((2, 3), 3.0)], dim=1)  # (2, 2, 2, 3)
    ref = drift_reference([(x, torch.tensor([0, 1]))], identity, 3)
    assert ref["input_axis"] == "channel" and ref["input_mean"] == [1.0, 3.0]
    assert ref["class_prior"] == [0.5, 0.5, 0.0]
    vectors = torch.tensor([[0.0, 10.0], [2.0, 10.0]])
    ref = drift_reference([(vectors, torch.tensor([1, 1]))], identity, 2)
    assert ref["input_axis"] == "feature" and ref["input_mean"] == [1.0, 10.0]
    assert ref["input_std"] == [1.0, 0.0]


def test_input_spec_names_each_input_without_the_batch_axis() -> None:
    pre = {"dtype": "uint8", "scale": 1 / 255, "mean": [0.0], "std": [1.0]}
    assert input_spec(torch.zeros(1, 3, 32, 32), pre) == [
        {"name": "input", "shape": [3, 32, 32], "dtype": "uint8"}
    ]
    text = {"input_ids": torch.zeros(1, 16, dtype=torch.long), "attention_mask": torch.ones(1, 16)}
    assert [s["name"] for s in input_spec(text, pre)] == ["input_ids", "attention_mask"]
    assert input_spec(text, pre)[0] == {"name": "input_ids", "shape": [16], "dtype": "int64"}
