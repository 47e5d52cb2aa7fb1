"""bitsandbytes 8-bit optimizers vs 32-bit AdamW: optimizer-state memory, loss and step time.

    python scripts/bench/bench_bnb_optim.py            # ~2 min on one CPU thread

Results: logs/bench/bnb_optim.json (git-ignored; --out to change), and printed.

A ~10M-parameter MLP (784 -> 2048 -> 2048 -> 2048 -> 10, 10.3M parameters) is trained for
`--steps` steps on a fixed synthetic classification task (a random teacher labels Gaussian
inputs) from the same initial weights with each optimizer. Reported: bytes of optimizer state
(every tensor in `optimizer.state`), the loss after the last step, and the median step time
(forward + backward + step), all in this one process with torch.set_num_threads(1).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimlab.optim import bnb_optimizer
from slimlab.utils.run_files import bench_results_path, write_json_atomic


def build_mlp(width: int = 2048) -> nn.Module:
    return nn.Sequential(
        nn.Linear(784, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if torch.is_tensor(v)
    )


def run(name: str, make: Any, model: nn.Module, data: list, steps: int) -> dict[str, Any]:
    model = copy.deepcopy(model)
    optimizer = make(model.parameters())
    times, losses = [], []
    for step in range(steps):
        x, y = data[step % len(data)]
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    return {
        "optimizer": name,
        "state_bytes": state_bytes(optimizer),
        "loss_first": losses[0],
        "loss_last": statistics.mean(losses[-5:]),
        "step_ms": statistics.median(times[2:]) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=bench_results_path("bnb_optim"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_mlp()
    params = sum(p.numel() for p in model.parameters())
    teacher = nn.Linear(784, 10)
    data = []
    for _ in range(8):
        x = torch.randn(args.batch_size, 784)
        data.append((x, teacher(x).argmax(1).detach()))

    optimizers = {
        "torch AdamW (32-bit)": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
        "bnb AdamW8bit": lambda p: bnb_optimizer(p, "AdamW8bit", lr=1e-3, weight_decay=0.01),
        "bnb Lion8bit": lambda p: bnb_optimizer(p, "Lion8bit", lr=1e-4, weight_decay=0.1),
    }
    bnb_optimizer(iter([nn.Parameter(torch.zeros(1))]), "AdamW8bit")  # pay the import up front
    rows = [run(name, make, model, data, args.steps) for name, make in optimizers.items()]
    base = rows[0]
    for row in rows:
        row["state_ratio_vs_adamw"] = row["state_bytes"] / base["state_bytes"]
        row["step_time_vs_adamw"] = row["step_ms"] / base["step_ms"]
    write_json_atomic(args.out, {"params": params, "rows": rows})

    print(
        f"\n{params / 1e6:.1f}M-parameter MLP, batch {args.batch_size}, {args.steps} steps, "
        "1 thread"
    )
    print("| optimizer | state | vs AdamW | loss first -> last (mean of 5) | step ms | vs AdamW |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['optimizer']} | {r['state_bytes'] / 2**20:.1f} MiB | "
            f"{r['state_ratio_vs_adamw']:.2f}x | {r['loss_first']:.3f} -> {r['loss_last']:.3f} | "
            f"{r['step_ms']:.1f} | {r['step_time_vs_adamw']:.2f}x |"
        )


if __name__ == "__main__":
    main()
