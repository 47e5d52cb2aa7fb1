"""A /predict body is checked against the model's input spec: each bad input class is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimlab.inference.requests import RequestError, parse_predict

IMAGE = [{"name": "input", "shape": [1, 2, 2], "dtype": "float32"}]
TEXT = [
    {"name": "input_ids", "shape": [3], "dtype": "int64"},
    {"name": "attention_mask", "shape": [3], "dtype": "int64"},
]
ONE = [[[0, 1], [2, 16]]]


def body(inputs) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


def test_one_input_or_a_batch() -> None:
    single = parse_predict(body(ONE), IMAGE, max_batch=8)
    assert single.single and single.size == 1
    assert single.rows["input"].shape == (1, 1, 2, 2)
    assert single.rows["input"].dtype == np.float32
    batch = parse_predict(body([ONE, ONE, ONE]), IMAGE, max_batch=8)
    assert not batch.single and batch.size == 3


def test_named_inputs() -> None:
    parsed = parse_predict(
        body({"input_ids": [[1, 2, 3], [4, 5, 6]], "attention_mask": [[1, 1, 0], [1, 1, 1]]}),
        TEXT,
        max_batch=8,
    )
    assert parsed.size == 2 and parsed.rows["input_ids"].dtype == np.int64


@pytest.mark.parametrize(
    ("raw", "status", "reason", "message"),
    [
        (b"{not json", 400, "malformed_json", "not valid JSON"),
        (b"[1, 2]", 422, "schema", '{"inputs"'),
        (body([[0, 1], [2, 3]]), 422, "shape", "shape [2, 2]: give [1, 2, 2] (one input) or"),
        (body([[[0, 1], [2]]]), 422, "shape", "ragged"),
        (body(7), 422, "shape", "is a int"),
        (body([[["a", "b"], ["c", "d"]]]), 422, "dtype", "holds strings: give numbers"),
        (body([[[True, False], [True, True]]]), 422, "dtype", "holds booleans"),
        (body([[[None, 1], [2, 3]]]), 422, "dtype", "mixed values or null"),
        (b'{"inputs": [[[NaN, 1], [2, 3]]]}', 422, "not_finite", "NaN or inf"),
        (body([[[1e300, 1], [2, 3]]]), 422, "not_finite", "overflows float32"),
        (body([]), 422, "empty", "empty batch"),
        (body([ONE] * 9), 413, "batch_too_large", "9 samples, over limits.max_batch=8"),
    ],
)
def test_bad_bodies_are_named(raw: bytes, status: int, reason: str, message: str) -> None:
    with pytest.raises(RequestError) as error:
        parse_predict(raw, IMAGE, max_batch=8)
    assert (error.value.status, error.value.reason) == (status, reason)
    assert message in error.value.message


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_ids": [[1, 2, 3]]}, "this model takes ['input_ids', 'attention_mask']"),
        ({"input_ids": [[1.5, 2, 3]], "attention_mask": [[1, 1, 1]]}, "floats: give integers"),
        ({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1, 1]] * 2}, "different batch sizes"),
        ([[1, 2, 3]], "named inputs"),
    ],
)
def test_bad_named_inputs_are_named(inputs, message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("[", r"\[")):
        parse_predict(body(inputs), TEXT, max_batch=8)
