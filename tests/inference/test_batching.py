"""Dynamic batching: concurrent requests share model calls and each gets its own rows back."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from slimlab.inference.batching import Batcher


class Model:
    """Doubles its input; records the size of every call."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.fail_on = fail_on

    def __call__(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        x = rows["input"]
        self.calls.append(len(x))
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("the model failed")
        return x * 2


def run(model: Model, sizes: list[int], max_batch: int, max_wait_s: float) -> list:
    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(model, pool, max_batch, max_wait_s)
            batcher.start()
            requests = [
                batcher.submit({"input": np.full((n, 1), float(i))}, n)
                for i, n in enumerate(sizes)
            ]
            answers = await asyncio.gather(*requests, return_exceptions=True)
            await batcher.stop()
            return answers

    return asyncio.run(main())


def test_concurrent_requests_share_model_calls_and_get_their_own_rows() -> None:
    model = Model()
    sizes = [1, 3, 2, 1, 1, 4, 1, 1]
    answers = run(model, sizes, max_batch=8, max_wait_s=0.05)
    for i, (n, answer) in enumerate(zip(sizes, answers)):
        assert answer.shape == (n, 1) and (answer == 2.0 * i).all()
    assert sum(model.calls) == sum(sizes)
    assert len(model.calls) < len(sizes)  # joined
    assert max(model.calls) <= 8


def test_a_request_larger_than_max_batch_runs_on_its_own() -> None:
    model = Model()
    answers = run(model, [2, 10, 2], max_batch=4, max_wait_s=0.01)
    assert [a.shape[0] for a in answers] == [2, 10, 2]
    assert 10 in model.calls


def test_without_waiting_a_lone_request_goes_at_once() -> None:
    model = Model()
    assert run(model, [1], max_batch=32, max_wait_s=0.0)[0].shape == (1, 1)
    assert model.calls == [1]


def test_a_failing_call_fails_its_own_batch_only() -> None:
    model = Model(fail_on=1.0)
    answers = run(model, [1, 1, 1], max_batch=1, max_wait_s=0.0)  # one call per request
    assert isinstance(answers[1], RuntimeError)
    assert (answers[0] == 0).all() and (answers[2] == 4).all()


def test_submit_before_start_is_refused() -> None:
    batcher = Batcher(Model(), ThreadPoolExecutor(1), 4, 0.0)
    with pytest.raises(AssertionError, match="start"):
        asyncio.run(batcher.submit({"input": np.zeros((1, 1))}, 1))
