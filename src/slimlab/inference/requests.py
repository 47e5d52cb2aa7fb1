"""A /predict request body checked against the model's input spec, or a 4xx naming the problem.

The body is JSON: `{"inputs": x}` where `x` is one input in the model's declared shape (nested
lists, e.g. 1x8x8 for the digits CNN) or a batch of them (one more axis in front); a model with
several named inputs (token ids and a mask) takes `{"inputs": {"input_ids": ..., ...}}`, each
one input or a batch. Every check happens here, per request, before the request joins a batch,
so one bad request never fails another's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class RequestError(Exception):
    """A request the service refuses: HTTP `status`, a short `reason` label, a message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the label of slimlab_predict_rejected_total
        self.message = message


@dataclass
class Parsed:
    """A checked request: network-ready raw arrays with a batch axis, and their batch size."""

    rows: dict[str, np.ndarray]
    size: int
    single: bool  # the client sent one input without a batch axis


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _array(name: str, value: Any, spec: dict[str, Any], max_batch: int) -> tuple[np.ndarray, bool]:
    """One input as an array of the spec's dtype with a batch axis; whether it had none."""
    shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
    expected = f"{_shape_text(shape)} (one input) or [batch, {_shape_text(shape)[1:]}"
    if isinstance(value, list) and len(value) == 0:
        raise RequestError(422, "empty", f"inputs {name!r} is an empty batch: give at least one")
    if not isinstance(value, list):
        kind = type(value).__name__
        raise RequestError(
            422, "shape", f"inputs {name!r} is a {kind}: give nested lists {expected}"
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(
            422, "shape", f"inputs {name!r} is ragged (rows of different lengths): give {expected}"
        ) from None
    if array.dtype.kind not in "iuf":
        found = {"b": "booleans", "U": "strings", "O": "mixed values or null"}.get(
            array.dtype.kind, str(array.dtype)
        )
        wanted = "integers" if dtype.kind in "iu" else "numbers"
        raise RequestError(422, "dtype", f"inputs {name!r} holds {found}: give {wanted} ({dtype})")
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise RequestError(422, "dtype", f"inputs {name!r} holds floats: give integers ({dtype})")
    single = array.ndim == len(shape)
    if single:
        array = array[None]
    if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
        raise RequestError(
            422, "shape", f"inputs {name!r} has shape {_shape_text(array.shape)}: give {expected}"
        )
    if array.shape[0] == 0:
        raise RequestError(422, "empty", f"inputs {name!r} is an empty batch: give at least one")
    if array.shape[0] > max_batch:
        raise RequestError(
            413,
            "batch_too_large",
            f"inputs {name!r} holds {array.shape[0]} samples, over limits.max_batch={max_batch}: "
            "split the batch",
        )
    with np.errstate(over="ignore"):  # an overflow becomes inf, refused just below
        array = array.astype(dtype, copy=False)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise RequestError(
            422, "not_finite", f"inputs {name!r} holds NaN or inf (or overflows {dtype})"
        )
    return array, single


def parse_predict(body: bytes, spec: list[dict[str, Any]], max_batch: int) -> Parsed:
    """Check a /predict body against `spec` (Predictor.input_spec); RequestError if it is bad."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, "malformed_json", f"the body is not valid JSON ({exc})") from None
    names = [s["name"] for s in spec]
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(
            422, "schema", 'the body must be a JSON object {"inputs": <nested lists>}'
        )
    inputs = payload["inputs"]
    if isinstance(inputs, dict):
        missing = [n for n in names if n not in inputs]
        extra = sorted(set(inputs) - set(names))
        if missing or extra:
            raise RequestError(
                422, "schema", f"inputs names {sorted(inputs)}: this model takes {names}"
            )
    elif len(spec) == 1:
        inputs = {names[0]: inputs}
    else:
        raise RequestError(
            422, "schema", f"this model takes named inputs {names}: give a JSON object of them"
        )
    rows: dict[str, np.ndarray] = {}
    singles = set()
    for s in spec:
        rows[s["name"]], single = _array(s["name"], inputs[s["name"]], s, max_batch)
        singles.add(single)
    sizes = {a.shape[0] for a in rows.values()}
    if len(sizes) > 1 or len(singles) > 1:
        raise RequestError(422, "shape", f"inputs have different batch sizes {sorted(sizes)}")
    return Parsed(rows, sizes.pop(), singles.pop())
