"""Transformer benchmark: the digits ViT dense, pruned (half its heads and MLP width, in a
run or cut from the trained model and distilled from it), distilled from a CNN teacher
(DeiT-style), and in int8 (QAT, and dynamic quantization).

    python scripts/bench/bench_transformers.py                 # logs/bench/transformers.json
    python scripts/bench/bench_transformers.py --update-docs   # also docs/transformers.md
    python scripts/bench/bench_transformers.py --seeds 1 --epochs 20 --repeats 10  # a short run

1. Accuracy, per seed (which seeds the model and the train/val/test split alike, as `python
   train.py -m experiment=... seed=1,2,3` does): `experiment=digits_cnn` (the CNN teacher, on
   that seed's split), `experiment=digits_vit` (dense), `experiment=digits_vit_prune` (50% of
   the heads and of the MLP width removed at a third of the epochs, fine-tuned),
   `experiment=digits_vit_prune_kd` (that seed's trained dense ViT with half its heads, MLP
   width and token width cut, fine-tuned for half the epochs with KD from its dense self),
   `experiment=digits_vit_distill` (KD from that CNN teacher on CutMix batches; for comparison
   the same KD without mixing, `data.mix=null`, and the dense ViT on CutMix batches without KD)
   and `experiment=digits_vit compression=qat` (fp32 for the first half of the epochs, then PT2E
   fake quantization, int8 ranges frozen for the last tenth, converted to an int8 x86 network,
   which is the one tested), all through `slimlab.train.train`. "Gap closed" = (mean KD acc -
   mean dense acc) / (mean teacher acc - mean dense acc). The dense ViT, and the pruned and
   distilled one, are also exported to ONNX and quantized dynamically (int8 MatMul/Gemm weights,
   activations quantized per call: `export.py quantize=int8_dynamic`, default settings), and
   those files' accuracy taken on the test split in onnxruntime.
2. Latency: the trained dense and pruned ViTs in PyTorch (fp32 eager), the QAT int8 network
   exported to QDQ ONNX (`slimlab.utils.onnx.export_onnx`, as export.py writes a QAT
   checkpoint's model.int8.onnx) and run by onnxruntime with its int8 kernels, and the dense
   ViT as fp32 ONNX in onnxruntime for reference, its dynamic int8 file there, and the pruned
   and distilled ViT's dynamic int8 file (the three techniques together): median of
   `--repeats` calls at batch 1 and 64 on one CPU thread (onnxruntime:
   intra_op_num_threads=1), 3 interleaved rounds in this one process, so the ratios compare
   like with like on a busy machine.

Results go to logs/bench/transformers.json; docs change only with --update-docs.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "transformers.md"
START, END = "<!-- bench_transformers:start -->", "<!-- bench_transformers:end -->"
BATCH_SIZES = (1, 64)  # latency is timed at these: the table's b1 and b64 columns

import slimlab.utils.resolvers  # noqa: E402,F401  (registers ${slimlab.*})
from slimlab.compression.heads import head_counts  # noqa: E402
from slimlab.compression.measure import compare, count_params, measure  # noqa: E402
from slimlab.inference.data import model_batches  # noqa: E402
from slimlab.inference.exporters import export_onnx, quantize_onnx_dynamic  # noqa: E402
from slimlab.inference.latency import cpu_int8_features, latency_table  # noqa: E402
from slimlab.inference.parity import parity  # noqa: E402
from slimlab.inference.runtime import as_feed, onnx_runner, onnx_session, torch_runner  # noqa: E402
from slimlab.train import train  # noqa: E402
from slimlab.utils.compose import QUIET, compose_config  # noqa: E402
from slimlab.utils.run_files import bench_results_path, save_bench_results  # noqa: E402


def run(
    experiment: str, seed: int, epochs: int, workdir: Path, *extra: str, tag: str = ""
) -> tuple[float, dict]:
    """Train `experiment` with `seed` for the model and the data split; return (test acc,
    objects)."""
    overrides = [
        f"experiment={experiment}",
        f"seed={seed}",
        f"data.seed={seed}",  # digits_vit_distill pins the split of digits_cnn's default seed
        f"trainer.max_epochs={epochs}",
        *QUIET,
        *extra,
    ]
    cfg = compose_config(overrides, workdir / f"{experiment}{tag}_{seed}")
    metrics, objects = train(cfg)
    return float(metrics["test/acc"]), objects


def example_batch(size: int) -> torch.Tensor:
    """A batch of `size` blank 8x8 digits: what latency is timed on (and exports trace)."""
    return torch.zeros(size, 1, 8, 8)


def onnxruntime_version() -> str:
    return importlib.metadata.version("onnxruntime")


def dynamic_int8(
    net: torch.nn.Module, datamodule: object, folder: Path
) -> tuple[float, object, int]:
    """Export `net` to ONNX, quantize it dynamically as `export.py quantize=int8_dynamic` does
    (its default opset and reduce_range); return (its test accuracy in onnxruntime, a
    one-thread session of it, its size in bytes)."""
    settings = OmegaConf.load(ROOT / "configs" / "export.yaml")
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    export_onnx(net, example_batch(1), fp32, settings.opset)
    quantize_onnx_dynamic(fp32, int8, settings.reduce_range)
    session = onnx_session(str(int8), threads=1)
    tests = [(as_feed(x), y.numpy()) for x, y in model_batches(datamodule, "test")]
    check = parity(torch_runner(net), {"int8": onnx_runner(session)}, tests)["int8"]
    return check["accuracy"], session, int8.stat().st_size


@functools.cache
def distill_experiment() -> Any:
    """configs/experiment/digits_vit_distill.yaml, as written (what the KD rows ran)."""
    return OmegaConf.load(ROOT / "configs" / "experiment" / "digits_vit_distill.yaml")


def kd_settings() -> str:
    """The KD settings `experiment=digits_vit_distill` gives (as the table rows name them)."""
    kd = distill_experiment().compression.distill
    return f"T={kd.temperature}, alpha={kd.alpha}" + (", hard" if kd.get("hard") else "")


def kd_mix() -> str:
    """The `data.mix` of `experiment=digits_vit_distill`: the dense comparison row uses it too."""
    return str(distill_experiment().data.mix)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="ViT runs per variant")
    parser.add_argument("--epochs", type=int, default=40, help="ViT epochs (pruned at 1/3)")
    parser.add_argument("--teacher-epochs", type=int, default=20, help="CNN teacher epochs")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes per latency")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite {DOC.name}")
    parser.add_argument("--out", type=Path, default=bench_results_path("transformers"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    load_before = round(os.getloadavg()[0], 2)
    accs: dict[str, list[float]] = {
        "dense": [], "dense_mix": [], "pruned": [], "pruned_kd": [], "kd": [], "kd_plain": [],
        "int8": [], "int8_dynamic": [], "pruned_kd_int8": [], "teacher": [],
    }  # fmt: skip
    qat_start = args.epochs // 2
    qat_freeze = args.epochs - max(1, args.epochs // 10)  # int8 ranges frozen from here on
    qat_freeze_key = [f"compression.qat.freeze_observer_epoch={qat_freeze}"] * (
        qat_freeze > qat_start
    )
    nets: dict[str, torch.nn.Module] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for seed in range(1, args.seeds + 1):
            acc, teacher = run("digits_cnn", seed, args.teacher_epochs, workdir, "test=true")
            accs["teacher"].append(acc)
            teacher_ckpt = teacher["trainer"].checkpoint_callback.best_model_path
            acc, objects = run("digits_vit", seed, args.epochs, workdir)
            accs["dense"].append(acc)
            nets["dense"] = objects["model"].net.cpu().eval()
            dense_ckpt = objects["trainer"].checkpoint_callback.best_model_path
            acc, dynamic, dynamic_bytes = dynamic_int8(
                nets["dense"], objects["datamodule"], workdir / f"dynamic_{seed}"
            )
            accs["int8_dynamic"].append(acc)
            acc, objects = run(
                "digits_vit_prune", seed, args.epochs, workdir,
                f"compression.prune.start_epoch={args.epochs // 3}",
                "compression.prune.report.latency=false",
            )  # fmt: skip
            accs["pruned"].append(acc)
            nets["pruned"] = objects["model"].net.cpu().eval()
            acc, objects = run(
                "digits_vit_prune_kd", seed, max(1, args.epochs // 2), workdir,
                f"compression.distill.teacher_ckpt={dense_ckpt}",
                "compression.prune.report.latency=false",
                "compression.distill.report.latency=false",
            )  # fmt: skip
            accs["pruned_kd"].append(acc)
            nets["pruned_kd"] = objects["model"].net.cpu().eval()
            acc, small, small_bytes = dynamic_int8(
                nets["pruned_kd"], objects["datamodule"], workdir / f"pruned_kd_{seed}"
            )
            accs["pruned_kd_int8"].append(acc)
            acc, _ = run(
                "digits_vit_distill", seed, args.epochs, workdir,
                f"compression.distill.teacher_ckpt={teacher_ckpt}",
                "compression.distill.report.latency=false",
            )  # fmt: skip
            accs["kd"].append(acc)
            acc, _ = run(
                "digits_vit_distill", seed, args.epochs, workdir,
                f"compression.distill.teacher_ckpt={teacher_ckpt}",
                "compression.distill.report.latency=false",
                "data.mix=null", tag="_plain",
            )  # fmt: skip
            accs["kd_plain"].append(acc)
            acc, _ = run(
                "digits_vit", seed, args.epochs, workdir, f"data.mix={kd_mix()}", tag="_mix"
            )
            accs["dense_mix"].append(acc)
            acc, objects = run(
                "digits_vit", seed, args.epochs, workdir,
                "compression=qat",
                f"compression.qat.start_epoch={qat_start}",
                *qat_freeze_key,
                "compression.qat.report.latency=false",
                tag="_qat",
            )  # fmt: skip
            accs["int8"].append(acc)  # the converted int8 network is the one tested
            nets["int8"] = objects["model"].net.cpu().eval()
            print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in accs.items()))

    example = example_batch(1)
    # where each network runs: the int8 one as QDQ ONNX in onnxruntime (PyTorch runs a converted
    # PT2E graph as reference quantize/dequantize ops), the dense one there too for reference
    runs_on = {name: ("torch", net) for name, net in nets.items() if name != "int8"}
    runs_on["dense_ort"] = ("onnxruntime", nets["dense"])
    runs_on["int8"] = ("onnxruntime", nets["int8"])
    timers = {
        name: functools.partial(
            measure, net, example, batch_sizes=BATCH_SIZES, repeats=args.repeats, threads=1,
            runtime=runtime,
        )
        for name, (runtime, net) in runs_on.items()
    }  # fmt: skip

    feeds = {b: {"input": example_batch(b).numpy()} for b in BATCH_SIZES}

    def session_timer(session: object, size: int) -> Callable[[], dict]:
        def timer() -> dict:  # one round: the rounds are interleaved here
            times = latency_table({"int8": onnx_runner(session)}, feeds, 1, args.repeats)
            return {"size_bytes": size, **{f"latency_ms_{b}": t for b, t in times["int8"].items()}}

        return timer

    timers["int8_dynamic"] = session_timer(dynamic, dynamic_bytes)
    timers["pruned_kd_int8"] = session_timer(small, small_bytes)
    timings = {name: [] for name in timers}
    for _ in range(3):  # interleaved rounds: load changes hit all alike
        for name, timer in timers.items():
            timings[name].append(timer())
    timed = {
        name: {
            **runs[0],
            "latency_ms_b1": statistics.median(r["latency_ms_b1"] for r in runs),
            "latency_ms_b64": statistics.median(r["latency_ms_b64"] for r in runs),
        }
        for name, runs in timings.items()
    }
    pruned = compare(timed["dense"], timed["pruned"])
    pruned_kd = compare(timed["dense"], timed["pruned_kd"])
    dense_ort = compare(timed["dense"], timed["dense_ort"])
    int8 = compare(timed["dense"], timed["int8"])
    dyn = compare(timed["dense"], timed["int8_dynamic"])
    all_three = compare(timed["dense"], timed["pruned_kd_int8"])
    mean = {k: statistics.mean(v) for k, v in accs.items()}
    gap = mean["teacher"] - mean["dense"]
    closed = (mean["kd"] - mean["dense"]) / gap if gap > 0 else float("nan")
    closed_plain = (mean["kd_plain"] - mean["dense"]) / gap if gap > 0 else float("nan")
    closed_mix = (mean["dense_mix"] - mean["dense"]) / gap if gap > 0 else float("nan")
    heads = sorted(set(head_counts(nets["pruned"]).values()))
    prune_drop = 100 * (mean["dense"] - mean["pruned"])
    prune_kd_drop = 100 * (mean["dense"] - mean["pruned_kd"])

    int8_drop = 100 * (mean["dense"] - mean["int8"])
    dyn_drop = 100 * (mean["dense"] - mean["int8_dynamic"])

    def verdict(met: bool) -> str:
        return "met" if met else "**not met**"

    def pct(values: list[float]) -> str:
        each = ", ".join(f"{100 * v:.1f}" for v in values)
        return f"{100 * statistics.mean(values):.2f} ({each})"

    lines = [
        "| ViT on digits | test acc % (seeds) | params | ms b1 | ms b64 | speed-up b64 |",
        "|---|---:|---:|---:|---:|---:|",
        f"| dense (4 heads of 24, MLP 192) | {pct(accs['dense'])} "
        f"| {count_params(nets['dense']):,} | {timed['dense']['latency_ms_b1']:.2f} "
        f"| {timed['dense']['latency_ms_b64']:.1f} | 1.00x |",
        f"| 50% heads + 50% MLP pruned at epoch {args.epochs // 3} of {args.epochs} "
        f"({'/'.join(map(str, heads))} heads of 24; `digits_vit_prune`) | {pct(accs['pruned'])} "
        f"| {count_params(nets['pruned']):,} | {timed['pruned']['latency_ms_b1']:.2f} "
        f"| {timed['pruned']['latency_ms_b64']:.1f} | {pruned['speedup_b64']:.2f}x |",
        f"| the trained dense ViT with 50% of heads, MLP and token width (96 -> 48) cut, "
        f"{args.epochs // 2} epochs of KD from it (`digits_vit_prune_kd`) "
        f"| {pct(accs['pruned_kd'])} "
        f"| {count_params(nets['pruned_kd']):,} | {timed['pruned_kd']['latency_ms_b1']:.2f} "
        f"| {timed['pruned_kd']['latency_ms_b64']:.1f} | {pruned_kd['speedup_b64']:.2f}x |",
        f"| KD from the CNN teacher on {kd_mix()} batches ({kd_settings()}; "
        f"`digits_vit_distill`) | {pct(accs['kd'])} | {count_params(nets['dense']):,} "
        "| – | – | – |",
        f"| the same KD without mixing (`data.mix=null`) | {pct(accs['kd_plain'])} "
        f"| {count_params(nets['dense']):,} | – | – | – |",
        f"| dense on {kd_mix()} batches, no KD (`data.mix={kd_mix()}`) | {pct(accs['dense_mix'])} "
        f"| {count_params(nets['dense']):,} | – | – | – |",
        f"| dense, ONNX fp32 in onnxruntime (reference) | – "
        f"| {count_params(nets['dense']):,} | {timed['dense_ort']['latency_ms_b1']:.2f} "
        f"| {timed['dense_ort']['latency_ms_b64']:.1f} | {dense_ort['speedup_b64']:.2f}x |",
        f"| int8 QAT (PT2E, fake-quant from epoch {qat_start}), ONNX QDQ in onnxruntime "
        f"| {pct(accs['int8'])} | int8 weights, {timed['int8']['size_bytes'] / 1e3:.0f} kB "
        f"(fp32 {timed['dense']['size_bytes'] / 1e3:.0f} kB) "
        f"| {timed['int8']['latency_ms_b1']:.2f} "
        f"| {timed['int8']['latency_ms_b64']:.1f} | {int8['speedup_b64']:.2f}x |",
        f"| dense, dynamic int8 ONNX in onnxruntime (`export.py quantize=int8_dynamic`) "
        f"| {pct(accs['int8_dynamic'])} | int8 weights, {dynamic_bytes / 1e3:.0f} kB "
        f"| {timed['int8_dynamic']['latency_ms_b1']:.2f} "
        f"| {timed['int8_dynamic']['latency_ms_b64']:.1f} | {dyn['speedup_b64']:.2f}x |",
        f"| `digits_vit_prune_kd`, then dynamic int8 ONNX in onnxruntime "
        f"| {pct(accs['pruned_kd_int8'])} | int8 weights, {small_bytes / 1e3:.0f} kB "
        f"| {timed['pruned_kd_int8']['latency_ms_b1']:.2f} "
        f"| {timed['pruned_kd_int8']['latency_ms_b64']:.1f} "
        f"| {all_three['speedup_b64']:.2f}x |",
        "",
        f"CNN teacher (`digits_cnn`, {args.teacher_epochs} epochs): {pct(accs['teacher'])} %. "
        "Pruning (target >= 1.6x at batch 64 with <= 1.5 points drop): in the run "
        f"{pruned['speedup_b64']:.2f}x ({verdict(pruned['speedup_b64'] >= 1.6)}), "
        f"{0.0 - prune_drop:+.2f} points ({verdict(prune_drop <= 1.5)}); cut from the trained "
        f"model and distilled from it {pruned_kd['speedup_b64']:.2f}x "
        f"({verdict(pruned_kd['speedup_b64'] >= 1.6)}), {0.0 - prune_kd_drop:+.2f} points "
        f"({verdict(prune_kd_drop <= 1.5)}). KD from the CNN changes accuracy by "
        f"{100 * (mean['kd'] - mean['dense']):+.2f} points, closing {100 * closed:.0f} % of "
        f"the gap to the teacher ({100 * gap:+.2f} points; target >= 30 %: "
        f"{verdict(closed >= 0.3)}); without mixing KD closes {100 * closed_plain:.0f} %, "
        f"{kd_mix()} without KD {100 * closed_mix:.0f} %. "
        "int8 vs fp32 eager at batch 64 "
        f"(target >= 2x with <= 1 point drop): QAT {int8['speedup_b64']:.2f}x "
        f"({verdict(int8['speedup_b64'] >= 2.0)}), {0.0 - int8_drop:+.2f} points "
        f"({verdict(int8_drop <= 1.0)}); dynamic {dyn['speedup_b64']:.2f}x "
        f"({verdict(dyn['speedup_b64'] >= 2.0)}), {0.0 - dyn_drop:+.2f} points "
        f"({verdict(dyn_drop <= 1.0)}).",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs ({cpu_int8_features()}) shared with other jobs, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime_version()}; "
        f"{args.seeds} seed(s), {args.epochs} ViT epochs (pruned at {args.epochs // 3}); "
        f"latency: 1 thread, median of 3 interleaved rounds of {args.repeats} passes; 1-minute "
        f"load average {load_before} before and {round(os.getloadavg()[0], 2)} after "
        f"({time.time() - started:.0f} s).",
    ]
    table = "\n".join(lines)
    print(table)
    results = {
        "table": table,
        "accuracy": accs,
        "gap_closed": closed,
        "gap_closed_kd_without_mix": closed_plain,
        "gap_closed_mix_without_kd": closed_mix,
        "pruned_vs_dense": pruned,
        "pruned_kd_vs_dense": pruned_kd,
        "onnx_fp32_vs_dense": dense_ort,
        "int8_vs_dense": int8,
        "int8_dynamic_vs_dense": dyn,
        "pruned_kd_int8_vs_dense": all_three,
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    block = (DOC, START, END) if args.update_docs else None
    for path in save_bench_results(args.out, results, block):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
