"""Quantization benchmark: QAT int8 vs fp32 on digits, CPU latency on 32x32 networks, bnb weights.

    python scripts/bench/bench_quantization.py                 # ~10 min on a quiet 2-core CPU
    python scripts/bench/bench_quantization.py --skip-train    # latency tables only

1. Accuracy and size on digits: trains experiment=digits_cnn (fp32) and experiment=digits_qat
   (10 fp32 + 10 QAT epochs, then int8 x86) with the same seed and split; reports test
   accuracy, weights on disk, and checks that eval of the int8 checkpoint gives the same test
   accuracy as the run.
2. Latency, one thread, on a 32x32 SmallCNN (widths 32/64/128) and ResNet-20: fp32 eager,
   fp32 torch.compile (inductor), torch.ao FX int8 (x86 and qnnpack engines), torch.ao
   dynamic quantization, and torchao's int8 (if `torchao` imports; pass --torchao-path to add
   a folder it was pip-installed into with --target). Median of `--rounds` rounds of `--repeats`
   timed passes each; the variants are interleaved within a round so that load from other
   processes on a shared CPU hits all of them alike. Ratios are taken within this process.
3. bitsandbytes post-training weight quantization of the digits MLP (experiment=digits_mlp):
   int8 / NF4 / FP4 linear weights vs fp32, test accuracy and weights on disk.

Results go to --out as JSON (logs/bench/quantization.json, git-ignored) and are printed as
markdown tables (copy them into docs/quantization.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*})
from slimlab.compression.measure import measure_latency, size_on_disk
from slimlab.compression.qat_stack import convert_int8, prepare_qat, set_qat_state
from slimlab.models.nets import CifarResNet, SmallCNN
from slimlab.utils.compose import QUIET, compose_config
from slimlab.utils.run_files import bench_results_path

EVAL_QUIET = [o for o in QUIET if not o.startswith("callbacks.")]  # eval.yaml has no callbacks


# -- 1. digits: fp32 vs QAT int8 ------------------------------------------------------------------
def bench_digits(work: Path) -> dict[str, Any]:
    from slimlab.eval import evaluate
    from slimlab.train import train

    torch.set_num_threads(torch.get_num_threads())  # training may use every core
    results: dict[str, Any] = {}
    for name in ("digits_cnn", "digits_qat"):
        start = time.perf_counter()
        metrics, objects = train(compose_config([f"experiment={name}", *QUIET], work / name))
        model = objects["model"]
        results[name] = {
            "test_acc": float(metrics["test/acc"]),
            "size_bytes": size_on_disk(model.net),
            "train_s": round(time.perf_counter() - start, 1),
            "best_checkpoint": objects["trainer"].checkpoint_callback.best_model_path,
            "report": getattr(model, "compression_report", None),
        }
    best = results["digits_qat"]["best_checkpoint"]
    eval_metrics, _ = evaluate(
        compose_config([f"ckpt_path={best}", *EVAL_QUIET], work / "eval", config_name="eval")
    )
    results["digits_qat"]["eval_test_acc"] = float(eval_metrics["test/acc"])
    return results


# -- 2. latency -----------------------------------------------------------------------------------
def int8_fx(net: nn.Module, example: torch.Tensor, backend: str) -> nn.Module:
    """torch.ao FX QAT prepare, a few observed batches, convert (latency needs no training)."""
    prepared = prepare_qat(copy.deepcopy(net), example[:1], backend)
    set_qat_state(prepared, fake_quant=True, observe=True)
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.randn_like(example))
    return convert_int8(prepared, backend)


def torchao_int8(net: nn.Module) -> nn.Module | None:
    """torchao int8 dynamic-activation / int8-weight quantization (eager), if torchao imports."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception:
        return None
    model = copy.deepcopy(net).eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def latency_variants(net: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    net = net.eval()
    variants: dict[str, Any] = {"fp32 eager": net}
    compiled = torch.compile(copy.deepcopy(net))
    variants["fp32 torch.compile"] = compiled
    variants["int8 torch.ao FX, x86"] = int8_fx(net, example, "x86")
    variants["int8 torch.ao FX, qnnpack"] = int8_fx(net, example, "qnnpack")
    torch.backends.quantized.engine = "x86"
    variants["torch.ao dynamic int8 (Linear only)"] = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(net), {nn.Linear}, dtype=torch.qint8
    )
    ao = torchao_int8(net)
    if ao is not None:
        variants["torchao int8 dyn-act/int8-weight (eager)"] = ao
    return variants


def engine_for(name: str) -> str:
    return "qnnpack" if "qnnpack" in name else "x86"


def bench_latency(rounds: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    nets: dict[str, Callable[[], nn.Module]] = {
        "SmallCNN 32/64/128, 32x32": lambda: SmallCNN(3, 10, widths=(32, 64, 128)),
        "ResNet-20, 32x32": lambda: CifarResNet(depth=20),
    }
    results: dict[str, Any] = {}
    for net_name, build in nets.items():
        torch.manual_seed(0)
        example = torch.randn(64, 3, 32, 32)
        variants = latency_variants(build(), example)
        for name, model in variants.items():  # warm up (compiles) once per batch size
            torch.backends.quantized.engine = engine_for(name)
            with torch.no_grad():
                for batch in (1, 64):
                    model(example[:batch])
        times: dict[str, dict[int, list[float]]] = {n: {1: [], 64: []} for n in variants}
        for _ in range(rounds):
            for name, model in variants.items():
                torch.backends.quantized.engine = engine_for(name)
                for batch in (1, 64):
                    ms = measure_latency(model, example[:1], batch, repeats=repeats, warmup=1)
                    times[name][batch].append(ms)
        torch.backends.quantized.engine = "x86"
        table = {
            name: {f"b{b}": statistics.median(t[b]) for b in (1, 64)} for name, t in times.items()
        }
        base, compiled = table["fp32 eager"], table["fp32 torch.compile"]
        for row in table.values():
            row["speedup_vs_eager_b64"] = base["b64"] / row["b64"]
            row["speedup_vs_compiled_b64"] = compiled["b64"] / row["b64"]
        sizes = {n: size_on_disk(m) for n, m in variants.items() if "compile" not in n}
        results[net_name] = {"latency_ms": table, "size_bytes": sizes}
    return results


# -- 3. bitsandbytes weights on the digits MLP ----------------------------------------------------
def bench_bnb_weights(work: Path) -> dict[str, Any]:
    from slimlab.compression.bnb_weights import quantize_linear_weights
    from slimlab.compression.measure import top1_counts
    from slimlab.train import train

    cfg = compose_config(["experiment=digits_mlp", *QUIET, "test=false"], work / "mlp")
    _, objects = train(cfg)
    model, data = objects["model"], objects["datamodule"]
    data.setup("test")
    net = model.net.cpu().eval()

    def normalize(batch: Any) -> Any:
        return data.on_after_batch_transfer(batch, 0)

    results: dict[str, Any] = {}
    for mode in ("fp32", "int8", "nf4", "fp4"):
        candidate = copy.deepcopy(net)
        if mode != "fp32":
            quantize_linear_weights(candidate, mode)
        normalized = top1_counts(  # the datamodule normalizes batches after transfer
            candidate, data.test_dataloader(), torch.device("cpu"), transfer=normalize
        )
        correct, seen = normalized
        results[mode] = {"test_acc": correct / seen, "size_bytes": size_on_disk(candidate)}
    return results


# -- output ---------------------------------------------------------------------------------------
def print_tables(results: dict[str, Any]) -> None:
    if "digits" in results:
        d = results["digits"]
        fp32, qat = d["digits_cnn"], d["digits_qat"]
        print("\n| digits CNN | test acc | weights on disk | train time |")
        print("| --- | --- | --- | --- |")
        print(
            f"| fp32 (digits_cnn) | {fp32['test_acc']:.4f} | {fp32['size_bytes']:,} B | "
            f"{fp32['train_s']} s |"
        )
        print(
            f"| QAT -> int8 x86 (digits_qat) | {qat['test_acc']:.4f} | {qat['size_bytes']:,} B"
            f" | {qat['train_s']} s |"
        )
        print(
            f"\naccuracy change {100 * (qat['test_acc'] - fp32['test_acc']):+.2f} points, "
            f"{fp32['size_bytes'] / qat['size_bytes']:.2f}x smaller; eval.py of the int8 "
            f"checkpoint: {qat['eval_test_acc']:.4f}"
        )
    for net_name, r in results.get("latency", {}).items():
        print(
            f"\n| {net_name}, 1 thread | b1 ms | b64 ms | vs fp32 eager (b64) | "
            "vs fp32 compiled (b64) | weights on disk |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for name, row in r["latency_ms"].items():
            size = r["size_bytes"].get(name)
            size_text = f"{size:,} B" if size else "-"
            print(
                f"| {name} | {row['b1']:.2f} | {row['b64']:.2f} | "
                f"{row['speedup_vs_eager_b64']:.2f}x | {row['speedup_vs_compiled_b64']:.2f}x | "
                f"{size_text} |"
            )
    if "bnb_weights" in results:
        r = results["bnb_weights"]
        print("\n| digits MLP, linear weights | test acc | weights on disk |")
        print("| --- | --- | --- |")
        for mode, row in r.items():
            print(f"| {mode} | {row['test_acc']:.4f} | {row['size_bytes']:,} B |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-train", action="store_true", help="latency tables only")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per round")
    parser.add_argument("--torchao-path", default=None, help="folder holding a torchao install")
    parser.add_argument("--out", type=Path, default=bench_results_path("quantization"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.torchao_path:
        sys.path.insert(0, args.torchao_path)

    results: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_threads_available": torch.get_num_threads(),
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    results["latency"] = bench_latency(args.rounds, args.repeats)
    out.write_text(json.dumps(results, indent=2, default=str))  # kept if a later part fails
    if not args.skip_train:
        with tempfile.TemporaryDirectory() as tmp:
            results["digits"] = bench_digits(Path(tmp))
            for entry in results["digits"].values():
                entry.pop("best_checkpoint", None)
            out.write_text(json.dumps(results, indent=2, default=str))
            results["bnb_weights"] = bench_bnb_weights(Path(tmp))
    out.write_text(json.dumps(results, indent=2, default=str))
    print_tables(results)
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
