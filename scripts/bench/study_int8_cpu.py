"""Does this CPU run int8 faster than fp32? One linear layer, and the digits ViT, measured.

    python scripts/bench/study_int8_cpu.py                  # logs/bench/int8_cpu.json (~1 min)
    python scripts/bench/study_int8_cpu.py --update-docs    # also docs/transformers.md

int8 speed is a property of the CPU's int8 instructions (AVX-512 VNNI, AVX-VNNI, AMX) more
than of the model: without them an int8 multiply-add takes about as many instructions as an
fp32 one. This study times one `nn.Linear` at three sizes (the ViT's qkv layer at batch 64, and
two larger ones) and the digits ViT itself (random weights: speed does not depend on them) on one
thread (`slimlab.inference.latency.latency_table`: the paths of one case interleaved, medians),
through each int8 CPU path the project has measured:

- fp32: PyTorch eager, and the same layer as ONNX in onnxruntime;
- onnxruntime dynamic int8 (`export.py quantize=int8_dynamic`: int8 weights, each input
  quantized per call);
- PyTorch's own dynamic int8 Linear (`torch.ao.quantization.quantize_dynamic`, fbgemm/x86
  kernels; deprecated by PyTorch, timed here for comparison only).

The table says how much faster int8 is than fp32 here; docs/transformers.md reads the ViT's
int8 rows against it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from slimlab.inference.exporters import quantize_onnx_dynamic
from slimlab.inference.latency import cpu_int8_features, latency_table
from slimlab.inference.runtime import Runner, onnx_runner, torch_runner
from slimlab.models.nets import VisionTransformer
from slimlab.utils.onnx import export_onnx, onnx_session
from slimlab.utils.run_files import bench_results_path, save_bench_results

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "transformers.md"
START, END = "<!-- study_int8_cpu:start -->", "<!-- study_int8_cpu:end -->"
SHAPES = ((320, 96, 288), (1024, 384, 1536), (4096, 768, 3072))  # (rows, in, out)


def runners(net: nn.Module, example: torch.Tensor, folder: Path) -> dict[str, Runner]:
    """fp32 eager, onnxruntime fp32, onnxruntime dynamic int8, torch dynamic int8 for `net`."""
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    export_onnx(net, example[:1], fp32, opset=20)
    quantize_onnx_dynamic(fp32, int8, reduce_range=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        torch_int8 = torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
    return {
        "fp32 eager": torch_runner(net),
        "fp32 onnxruntime": onnx_runner(onnx_session(fp32, threads=1)),
        "int8 onnxruntime dynamic": onnx_runner(onnx_session(int8, threads=1)),
        "int8 torch dynamic": torch_runner(torch_int8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite {DOC.name}")
    parser.add_argument("--out", type=Path, default=bench_results_path("int8_cpu"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases: dict[str, tuple[nn.Module, torch.Tensor, int]] = {  # (net, input, timed calls)
        f"Linear {k} -> {n}, {m} rows": (nn.Linear(k, n).eval(), torch.randn(m, k), calls)
        for (m, k, n), calls in zip(SHAPES, (20, 5, 2), strict=True)
    }
    cases["digits ViT, batch 64"] = (VisionTransformer().eval(), torch.randn(64, 1, 8, 8), 20)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (net, example, repeats)) in enumerate(cases.items()):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            feeds = {len(example): {"input": example.numpy()}}
            table = latency_table(runners(net, example, folder), feeds, args.rounds, repeats)
            results[name] = {path: ms[f"b{len(example)}"] for path, ms in table.items()}
    paths = list(next(iter(results.values())))
    lines = [
        "| ms per call (speed-up vs fp32 eager) | " + " | ".join(paths) + " |",
        "|---|" + "---:|" * len(paths),
    ]
    for name, row in results.items():
        base = row["fp32 eager"]
        cells = [f"{row[p]:.3g} ({base / row[p]:.2f}x)" for p in paths]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on a CPU with {cpu_int8_features()}, one thread, "
        f"median of {args.rounds} interleaved rounds; torch {torch.__version__}, onnxruntime "
        f"{importlib.metadata.version('onnxruntime')}.",
    ]
    table = "\n".join(lines)
    print(table)
    summary = {"table": table, "ms": results, "cpu": cpu_int8_features()}
    block = (DOC, START, END) if args.update_docs else None
    for path in save_bench_results(args.out, summary, block):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
