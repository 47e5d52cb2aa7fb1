"""Pruning benchmark: dense vs pruned accuracy on digits, size and CPU latency on 32x32 nets.

    python scripts/bench/bench_pruning.py                 # results in logs/bench/pruning.json
    python scripts/bench/bench_pruning.py --update-docs   # also the table in docs/pruning.md
    python scripts/bench/bench_pruning.py --seeds 1 --epochs 6 --repeats 5   # a quick look

1. Digits: `experiment=digits_cnn` (dense) and `experiment=digits_prune` (50% of the channels
   removed at epoch 10, fine-tuned to epoch 30) trained through `slimlab.train.train` with the
   same seeds; test accuracy is the mean over seeds. Training runs on one thread: the
   accuracies then repeat exactly for the same seeds (with 2 threads, float sums run in
   another order and one seed moved from 98.89% to 99.63%, two of 270 test images).
2. Latency: the trained digits CNNs, and randomly initialised 32x32 networks (ResNet-56 and the
   small CNN on 3x32x32 input) pruned to 50% of their channels by the same functions the
   callback uses. Every latency is the median of `--repeats` timed forward passes on one CPU
   thread (`torch.set_num_threads(1)`), dense and pruned measured in this one process, so the
   ratios compare like with like even when the machine is busy.

The results (the table, each seed's accuracy, the machine) go to logs/bench/pruning.json;
docs/pruning.md changes only with --update-docs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "pruning.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

import slimlab.utils.resolvers  # noqa: E402,F401  (registers ${slimlab.*})
from slimlab.compression.measure import compare, measure  # noqa: E402
from slimlab.compression.pruning import build_pruner, find_head, prune_step  # noqa: E402
from slimlab.models.nets import CifarResNet, SmallCNN  # noqa: E402
from slimlab.train import train  # noqa: E402
from slimlab.utils.compose import compose_config  # noqa: E402
from slimlab.utils.run_files import bench_results_path, save_bench_results  # noqa: E402


def train_digits(experiment: str, seed: int, epochs: int, workdir: Path) -> tuple[float, object]:
    """Train `experiment` on digits; return (test accuracy, the trained network)."""
    overrides = [
        f"experiment={experiment}",
        f"seed={seed}",
        f"trainer.max_epochs={epochs}",
        "logger=none",
        "callbacks.rich_progress_bar=null",
        "callbacks.model_summary=null",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
    ]
    if experiment == "digits_prune":
        overrides.append("compression.prune.report.latency=false")  # measured below instead
        overrides.append(f"compression.prune.start_epoch={epochs // 3}")  # 10 of 30
    cfg = compose_config(overrides, workdir / f"{experiment}_{seed}")
    metrics, objects = train(cfg)
    return float(metrics["test/acc"]), objects["model"].net


def pruned_copy(net: torch.nn.Module, example: torch.Tensor, ranking: str, round_to: int | None):
    """`net` with 50% of its channels removed (L1, classifier head kept), as the callback does."""
    head = find_head(net, example)
    ignored = [head] if head else []
    pruner = build_pruner(net, example, "l1", ranking, round_to, ignored, amount=0.5, steps=1)
    prune_step(pruner)
    return net


def row(name: str, variant: str, result: dict, acc: float | None = None) -> str:
    after = result["after"]

    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    return (
        f"| {name} | {variant} | {fmt(None if acc is None else 100 * acc, '.2f')} "
        f"| {after['params']:,} | {after['macs'] / 1e6:.2f} | {after['size_bytes'] / 1024:.0f} "
        f"| {after['latency_ms_b1']:.2f} | {after['latency_ms_b64']:.1f} "
        f"| {fmt(result['speedup_b1'], '.2f')}x | {fmt(result['speedup_b64'], '.2f')}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="digits runs per variant")
    parser.add_argument("--epochs", type=int, default=30, help="digits epochs (prune at 10)")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per latency")
    parser.add_argument("--update-docs", action="store_true", help="rewrite docs/pruning.md")
    parser.add_argument("--out", type=Path, default=bench_results_path("pruning"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # training too: the same seeds give the same accuracies
    torch.manual_seed(0)
    started = time.time()
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    def timed(net: torch.nn.Module, example: torch.Tensor) -> dict:
        return measure(net, example, batch_sizes=(1, 64), repeats=args.repeats, threads=1)

    lines = []
    # 1. digits: accuracy after fine-tuning, and the trained networks' size and latency
    accs: dict[str, list[float]] = {"digits_cnn": [], "digits_prune": []}
    nets: dict[str, torch.nn.Module] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for seed in range(42, 42 + args.seeds):
            for experiment in accs:
                acc, net = train_digits(experiment, seed, args.epochs, Path(workdir))
                accs[experiment].append(acc)
                nets[experiment] = net.cpu().eval()
                print(f"{experiment} seed {seed}: test acc {acc:.4f}", file=sys.stderr)
    x_digits = torch.zeros(1, 1, 8, 8)
    dense = timed(nets["digits_cnn"], x_digits)
    pruned = timed(nets["digits_prune"], x_digits)
    acc_dense = statistics.mean(accs["digits_cnn"])
    acc_pruned = statistics.mean(accs["digits_prune"])
    lines.append(row("SmallCNN, digits 8x8", "dense", compare(dense, dense), acc_dense))
    lines.append(
        row(
            "SmallCNN, digits 8x8",
            "50% channels, local L1, round_to=8",
            compare(dense, pruned),
            acc_pruned,
        )
    )

    # 2. 32x32 networks, random weights: what the shapes cost on the CPU
    for name, make, example in [
        ("ResNet-56, 3x32x32", lambda: CifarResNet(depth=56), torch.zeros(1, 3, 32, 32)),
        ("SmallCNN, 3x32x32", lambda: SmallCNN(in_channels=3), torch.zeros(1, 3, 32, 32)),
    ]:
        dense_net = make().eval()
        dense = timed(dense_net, example)
        lines.append(row(name, "dense", compare(dense, dense)))
        variants = [("local", 8, "50% channels, local L1, round_to=8")]
        if name.startswith("ResNet"):
            variants.append(("global", None, "50% channels, global L1, no round_to"))
        for ranking, round_to, label in variants:
            net = make().eval()
            net.load_state_dict(dense_net.state_dict())
            result = compare(dense, timed(pruned_copy(net, example, ranking, round_to), example))
            lines.append(row(name, label, result))

    load_after = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    header = [
        "| network | variant | test acc % | params | MMACs | size KB | ms b1 | ms b64 "
        "| speed-up b1 | speed-up b64 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    accuracy_note = (
        f"Digits test accuracy: mean of {args.seeds} seed(s) "
        f"(dense {[round(100 * a, 2) for a in accs['digits_cnn']]}, "
        f"pruned {[round(100 * a, 2) for a in accs['digits_prune']]}); "
        f"change {100 * (acc_pruned - acc_dense):+.2f} points."
    )
    machine = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, 1 thread (training and "
        "timing), median of "
        f"{args.repeats} passes; 1-minute load average {load_before} before and {load_after} "
        f"after ({time.time() - started:.0f} s)."
    )
    table = "\n".join([*header, *lines, "", accuracy_note, "", machine])
    print(table)
    results = {
        "table": table,
        "accuracy": accs,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    block = (DOC, START, END) if args.update_docs else None
    for path in save_bench_results(args.out, results, block):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
