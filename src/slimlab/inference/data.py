"""What an exported model needs to know about its data: preprocessing, input spec, drift reference.

All of it is plain data (lists, floats, strings) so it travels in `export.json`:

- ``preprocessing``: how a raw input (what the dataset stores: 0..16 digits pixels, 0..255
  uint8 images) becomes the network's input, ``(raw * scale - mean[c]) / std[c]`` per channel,
  as the data module applies it in training (`ClassificationDataModule.preprocessing`);
- ``inputs``: per input its name, shape without the batch axis and raw dtype;
- ``reference``: the training split's class prior and the per-channel (images) or per-feature
  mean/std of raw inputs, the baseline a service compares live traffic with (drift).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from slimlab.models.classification import split_batch
from slimlab.utils.errors import ConfigError

IDENTITY = {"dtype": "float32", "scale": 1.0, "mean": [0.0], "std": [1.0]}


def preprocess(raw: np.ndarray, preprocessing: Mapping[str, Any]) -> np.ndarray:
    """Raw inputs (N, C, ...) to network inputs (float32), as the data module does in training."""
    x = np.asarray(raw, dtype=np.float32) * np.float32(preprocessing["scale"])
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)
    std = np.asarray(preprocessing["std"], dtype=np.float32)
    if x.ndim >= 2 and mean.size > 1:  # per channel (axis 1)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = mean.reshape(shape), std.reshape(shape)
    return (x - mean) / std


def to_raw(x: torch.Tensor, preprocessing: Mapping[str, Any]) -> torch.Tensor:
    """Invert `preprocess`: network inputs back to raw values (for the drift reference)."""
    mean = torch.tensor(preprocessing["mean"], dtype=x.dtype)
    std = torch.tensor(preprocessing["std"], dtype=x.dtype)
    if x.ndim >= 2 and mean.numel() > 1:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean, std = mean.view(shape), std.view(shape)
    return (x * std + mean) / float(preprocessing["scale"])


def input_spec(example: Any, preprocessing: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per network input: name, shape without the batch axis, raw dtype."""
    if isinstance(example, Mapping):  # text models: named integer tensors, no normalisation
        return [
            {
                "name": name,
                "shape": list(t.shape[1:]),
                "dtype": str(t.dtype).removeprefix("torch."),
            }
            for name, t in example.items()
        ]
    return [{"name": "input", "shape": list(example.shape[1:]), "dtype": preprocessing["dtype"]}]


def model_batches(datamodule: Any, split: str, limit: int | None = None) -> Iterator[tuple]:
    """(network input, labels) batches of a data module's split, normalised as in training; a
    dict batch (text models) becomes (the dict of inputs, its "labels")."""
    loader = {"train": datamodule.train_dataloader, "test": datamodule.test_dataloader}[split]()
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            return
        yield split_batch(datamodule.on_after_batch_transfer(batch, 0))


def drift_reference(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    preprocessing: Mapping[str, Any],
    num_classes: int,
) -> dict[str, Any]:
    """Class prior of the labels and per-channel (images) or per-feature raw input mean/std."""
    counts = torch.zeros(num_classes, dtype=torch.float64)
    total = total_sq = None
    n = 0
    axis = "feature"
    for x, y in batches:
        if not isinstance(x, torch.Tensor):  # dict inputs: token ids carry no input statistics
            counts += torch.bincount(y, minlength=num_classes).double()
            continue
        raw = to_raw(x.double(), preprocessing)
        if raw.ndim >= 3:  # images: per channel, over batch and space
            axis = "channel"
            flat = raw.transpose(0, 1).reshape(raw.shape[1], -1)
        else:
            flat = raw.reshape(raw.shape[0], -1).T
        total = flat.sum(1) if total is None else total + flat.sum(1)
        total_sq = (flat**2).sum(1) if total_sq is None else total_sq + (flat**2).sum(1)
        n += flat.shape[1]
        counts += torch.bincount(y, minlength=num_classes).double()
    if counts.sum() == 0:
        raise ConfigError("the training split is empty: no drift reference can be computed")
    reference: dict[str, Any] = {"class_prior": (counts / counts.sum()).tolist()}
    if total is not None:
        mean = total / n
        std = (total_sq / n - mean**2).clamp_min(0).sqrt()
        reference.update(
            {"input_axis": axis, "input_mean": mean.tolist(), "input_std": std.tolist()}
        )
    return reference


def describe_data(datamodule: Any, num_classes: int, reference: bool = True) -> dict[str, Any]:
    """`preprocessing` (and, if asked, the training split's drift `reference`) of a data module.

    A data module without a `preprocessing()` method is taken to feed the network raw inputs.
    """
    datamodule.setup("fit")
    describe = getattr(datamodule, "preprocessing", None)
    described: dict[str, Any] = {"preprocessing": dict(describe() if describe else IDENTITY)}
    if reference:
        described["reference"] = drift_reference(
            model_batches(datamodule, "train"), described["preprocessing"], num_classes
        )
    return described
