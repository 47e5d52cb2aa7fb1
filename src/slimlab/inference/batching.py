"""Dynamic batching: concurrent requests share one model call.

Timeline: a request handler calls `await batcher.submit(rows)` with its validated batch (a dict
name -> array, N rows). The batcher's task takes the oldest waiting request, then keeps adding
waiting requests until the batch holds `max_batch` rows or the oldest has waited `max_wait_s`;
a request that would overflow the batch starts the next one. The joined batch runs in the
inference thread (one per process: CPU inference gains nothing from two calls at once), and
each request gets its own rows of the answer back; an error fails every request of that batch.
Requests that arrive while the model runs queue up, so under load batches fill without waiting.

`max_wait_s=0` batches only what is already waiting (no added latency at low load).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from slimlab.utils.logging import get_logger

log = get_logger(__name__)

Rows = Mapping[str, np.ndarray]


@dataclass
class _Waiting:
    rows: Rows
    size: int
    future: asyncio.Future = field(repr=False)


def join(batches: list[Rows]) -> dict[str, np.ndarray]:
    """Concatenate several batches (dicts of arrays with a batch axis) along the batch axis."""
    if len(batches) == 1:
        return dict(batches[0])
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


class Batcher:
    """Joins concurrent `submit` calls into model calls of at most `max_batch` rows."""

    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], np.ndarray],
        executor: Executor,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[dict[str, np.ndarray], np.ndarray, float], None] | None = None,
    ) -> None:
        self.run = run
        self.executor = executor
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.on_batch = on_batch  # (joined inputs, outputs, seconds) after each model call
        self._waiting: deque[_Waiting] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._running: list[_Waiting] = []

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="slimlab-batcher")

    async def stop(self) -> None:
        """Stop the batching task; requests still waiting fail with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for w in [*self._running, *self._waiting]:
            w.future.cancel()
        self._waiting.clear()

    async def submit(self, rows: Rows, size: int) -> np.ndarray:
        """The model's output rows for `rows` (a batch of `size`), computed with others'."""
        assert self._arrived is not None, "Batcher.start() was not called"
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(rows, size, future))
        self._arrived.set()
        return await future

    async def _next_batch(self) -> list[_Waiting]:
        """Wait for a request, then gather more until the batch is full or the wait is over."""
        assert self._arrived is not None
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        batch = [self._waiting.popleft()]
        size = batch[0].size
        deadline = time.monotonic() + self.max_wait_s
        loop = asyncio.get_running_loop()
        while size < self.max_batch:
            if self._waiting:
                if size + self._waiting[0].size > self.max_batch:
                    break  # it starts the next batch
                item = self._waiting.popleft()
                batch.append(item)
                size += item.size
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            timer = loop.call_later(remaining, self._arrived.set)
            try:
                await self._arrived.wait()
            finally:
                timer.cancel()
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            batch = [w for w in batch if not w.future.done()]  # the client went away
            if not batch:
                continue
            self._running = batch
            inputs = join([w.rows for w in batch])
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, inputs)
            except Exception as exc:
                self._running = []
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            seconds = time.perf_counter() - started
            start = 0
            for w in batch:
                if not w.future.done():
                    w.future.set_result(outputs[start : start + w.size])
                start += w.size
            self._running = []
            if self.on_batch is not None:
                try:
                    self.on_batch(inputs, outputs, seconds)
                except Exception as exc:  # monitoring never stops the service
                    log.warning(f"batch monitoring failed: {exc!r}")
