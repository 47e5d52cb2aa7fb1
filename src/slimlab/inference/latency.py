"""CPU latency of several runners, measured interleaved so that machine load hits them alike,
and the CPU's int8 instructions that int8 latency depends on."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from pathlib import Path

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


def cpu_int8_features() -> str:
    """The x86 int8 instructions this CPU has (onnxruntime's int8 speed depends on them)."""
    try:
        flags = next(
            set(line.split(":", 1)[1].split())
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "int8 instructions unknown"
    names = {"amx_int8": "AMX", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI"}
    found = [name for flag, name in names.items() if flag in flags]
    return ", ".join(found) or ("AVX2, no VNNI" if "avx2" in flags else "no AVX2")
