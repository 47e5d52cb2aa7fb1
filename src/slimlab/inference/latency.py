"""CPU latency of several runners, measured interleaved so that machine load hits them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import numpy as np
import torch

from slimlab.inference.runtime import Runner


def latency_table(
    runners: Mapping[str, Runner],
    feeds: Mapping[int, Mapping[str, np.ndarray]],
    rounds: int = 5,
    repeats: int = 10,
    threads: int = 1,
) -> dict[str, dict[str, float]]:
    """Median ms per call of each runner at each batch size: {name: {"b<N>": ms}}.

    `feeds` maps a batch size to a feed of that size. Each round runs every runner on every
    feed (one warm-up call, then `repeats` timed calls, their median); the table holds the
    median over rounds. torch runs on `threads` threads (onnxruntime sessions set their own).
    """
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in feeds} for n in runners}
    try:
        for _ in range(rounds):
            for name, run in runners.items():
                for batch, feed in feeds.items():
                    run(feed)
                    calls = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        run(feed)
                        calls.append(time.perf_counter() - start)
                    times[name][batch].append(statistics.median(calls) * 1000.0)
    finally:
        torch.set_num_threads(old_threads)
    return {
        name: {f"b{b}": statistics.median(ms) for b, ms in per_batch.items()}
        for name, per_batch in times.items()
    }
