"""Export benchmark: torch fp32 eager vs torch int8 vs onnxruntime fp32 / int8, one CPU thread.

    python scripts/bench/bench_export.py                  # ~10 min on a quiet 2-core CPU
    python scripts/bench/bench_export.py --update-docs    # also rewrite docs/export.md's table

Models:
- the digits CNN (`experiment=digits_cnn`, trained here) and the recipe's student (the
  SmallCNN with half the channels that `experiment=digits_compress` ends with, 16/32/64,
  trained here as a float model), both exported by export.py's own `export()` (its wall time
  is the "export under 30 s" target);
- a 32x32 SmallCNN (32/64/128) and ResNet-20, trained for a few epochs on the digits upscaled
  to 3x32x32 (CIFAR-10 needs a download; the latency does not depend on the data), exported
  with the same library functions.

Columns: torch fp32 eager; torch int8 on the chosen stack (torchao PT2E post-training
quantization with X86InductorQuantizer, run by torch.compile);
onnxruntime fp32 (model.onnx) and int8 (onnxruntime static QDQ, calibrated on 8 training
batches). Batch 1 and 64, one thread, interleaved medians. Accuracy is on the test split.
Results go to logs/bench/export.json; docs change only with --update-docs.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimlab.inference.exporters import export_onnx, quantize_onnx_int8
from slimlab.inference.latency import latency_table
from slimlab.inference.parity import parity
from slimlab.inference.runtime import onnx_runner, onnx_session, torch_runner
from slimlab.utils.compose import QUIET, compose_config

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "logs" / "bench" / "export.json"
DOC = ROOT / "docs" / "export.md"
MARK = ("<!-- bench_export:begin -->", "<!-- bench_export:end -->")
warnings.filterwarnings("ignore")


def pt2e_int8(
    net: nn.Module, example: torch.Tensor, calibration: list[torch.Tensor]
) -> tuple[Any, dict[str, Any]]:
    """torchao PT2E static int8 (X86InductorQuantizer), inductor-compiled; None without torchao."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError:
        return None, {"failures": ["torchao is not installed"]}
    import torch._inductor.config as inductor_config

    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(
        copy.deepcopy(net).eval(), (example[:2],), dynamic_shapes=({0: batch},)
    )
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    converted = convert_pt2e(prepared)
    failures = []
    for freezing in (True, False):  # freezing lowers to int8 kernels; without it, a fallback
        inductor_config.freezing = freezing
        torch._dynamo.reset()
        start = time.perf_counter()
        compiled = torch.compile(converted)
        try:
            with torch.no_grad():  # compile for both batch sizes now, not inside the timing
                compiled(example[:1])
                compiled(example[:64])
        except Exception as exc:  # an inductor lowering error: recorded, not fatal
            failures.append(f"freezing={freezing}: {type(exc).__name__}: {str(exc)[:200]}")
            print("torch.compile failed:", failures[-1], flush=True)
            continue
        info = {"compile_s": time.perf_counter() - start, "freezing": freezing}
        return compiled, {**info, "failures": failures}
    return None, {"failures": failures}


def torch_int8_label(compile_info: dict[str, Any]) -> str:
    freezing = "" if compile_info.get("freezing") else ", no freezing"
    return f"torch int8 (PT2E + inductor{freezing})"


def digits32() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The digits split of DigitsDataModule, upscaled to 3x32x32 (train, test)."""
    from slimlab.data import DigitsDataModule

    dm = DigitsDataModule(seed=42)
    dm.setup("fit")

    def stack(ds):
        x = torch.stack([a for a, _ in ds])
        x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        return x, torch.stack([b for _, b in ds])

    return stack(dm.data_train), stack(dm.data_test)


def train_plain(net: nn.Module, data, epochs: int) -> nn.Module:
    x, y = data
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(64):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval()


def bench_model(
    name: str, net: nn.Module, train, test, work: Path, rounds: int, repeats: int
) -> dict[str, Any]:
    """Export `net` (fp32 and int8 ONNX), check it on `test`, time the four variants."""
    torch.set_num_threads(1)
    net = net.eval()
    example = train[0][:64]
    stem = re.sub(r"\W+", "_", name)
    fp32, int8 = work / f"{stem}.onnx", work / f"{stem}.int8.onnx"
    start = time.perf_counter()
    export_onnx(net, example[:1], fp32, opset=20)
    calibration = [train[0][i : i + 64] for i in range(0, 8 * 64, 64)]
    quantize_onnx_int8(fp32, int8, [{"input": c.numpy()} for c in calibration])
    export_s = time.perf_counter() - start
    runners = {
        "ORT fp32": onnx_runner(onnx_session(str(fp32), 1)),
        "ORT int8": onnx_runner(onnx_session(str(int8), 1)),
    }
    compiled, compile_info = pt2e_int8(net, example, calibration)
    if compiled is not None:
        runners[torch_int8_label(compile_info)] = torch_runner(compiled)
    reference = torch_runner(net)
    tests = [
        ({"input": x.numpy()}, y.numpy()) for x, y in zip(test[0].split(64), test[1].split(64))
    ]
    checks = parity(reference, runners, tests)
    feeds = {b: {"input": example[:b].numpy()} for b in (1, 64)}
    table = latency_table({"torch fp32 eager": reference, **runners}, feeds, rounds, repeats)
    base = table["torch fp32 eager"]["b64"]
    rows = {
        variant: {
            **ms,
            "speedup_b64": base / ms["b64"],
            "accuracy": checks[variant]["accuracy"] if variant in checks else None,
            "agreement": checks[variant]["top1_agreement"] if variant in checks else None,
        }
        for variant, ms in table.items()
    }
    rows["torch fp32 eager"]["accuracy"] = next(iter(checks.values()))["accuracy_torch"]
    result = {
        "rows": rows,
        "export_onnx_and_int8_s": export_s,
        "pt2e_compile": compile_info,
        "size_bytes": {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size},
    }
    print(name, json.dumps(result, indent=1), flush=True)
    return result


def bench_digits_entry(work: Path, rounds: int, repeats: int) -> dict[str, Any]:
    """digits CNN and the recipe's student through train() and export.py's export()."""
    from slimlab.export import export
    from slimlab.train import train

    results: dict[str, Any] = {}
    for name, overrides in (
        ("digits CNN 32/64/128", ["experiment=digits_cnn"]),
        ("recipe student 16/32/64", ["experiment=digits_cnn", "model.net.widths=[16,32,64]"]),
    ):
        folder = work / re.sub(r"\W+", "_", name)
        _, objects = train(compose_config([*overrides, *QUIET, "test=false"], folder))
        ckpt = objects["trainer"].checkpoint_callback.best_model_path
        out = folder / "export"
        cfg = compose_config(
            [
                f"ckpt_path={ckpt}",
                f"output_dir={out}",
                "quantize=int8",
                f"latency.rounds={rounds}",
                f"latency.repeats={repeats}",
            ],
            folder / "export_run",
            config_name="export",
        )
        start = time.perf_counter()
        summary = export(cfg)
        wall = time.perf_counter() - start
        module = objects["model"]
        data = objects["datamodule"]
        train_data = (torch.stack([x for x, _ in data.data_train]), None)
        test = (
            torch.stack([x for x, _ in data.data_test]),
            torch.stack([y for _, y in data.data_test]),
        )
        calibration = [train_data[0][i : i + 64] for i in range(0, 8 * 64, 64)]
        compiled, compile_info = pt2e_int8(
            module.net.cpu().eval(), train_data[0][:64], calibration
        )
        torch_int8: dict[str, Any] = {"compile": compile_info}
        if compiled is not None:
            torch.set_num_threads(1)
            reference, runner = torch_runner(module.net), torch_runner(compiled)
            tests = [
                ({"input": x.numpy()}, y.numpy())
                for x, y in zip(test[0].split(64), test[1].split(64))
            ]
            check = parity(reference, {"int8": runner}, tests)["int8"]
            feeds = {b: {"input": train_data[0][:b].numpy()} for b in (1, 64)}
            table = latency_table({"eager": reference, "int8": runner}, feeds, rounds, repeats)
            torch_int8.update(
                {
                    "ratio_b1": table["eager"]["b1"] / table["int8"]["b1"],
                    "ratio_b64": table["eager"]["b64"] / table["int8"]["b64"],
                    "accuracy": check["accuracy"],
                    "agreement": check["top1_agreement"],
                }
            )
        results[name] = {"export_json": summary, "export_wall_s": wall, "torch_int8": torch_int8}
        print(name, "export", round(wall, 1), "s", flush=True)
    return results


def save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))


def table_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| model | variant | b1 ms | b64 ms | vs torch fp32 b64 | test acc | top-1 agreement |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for name, res in results.get("entry", {}).items():
        s = res["export_json"]
        base = s["torch_latency_ms"]
        acc = s["artifacts"]["model.onnx"]["parity"]["accuracy_torch"]
        lines.append(
            f"| {name} | torch fp32 eager | {base['b1']:.3f} | {base['b64']:.3f} | 1.00x | "
            f"{acc:.4f} | - |"
        )
        ti = res.get("torch_int8") or {}
        if "ratio_b64" in ti:
            lines.append(
                f"| {name} | {torch_int8_label(ti['compile'])} | "
                f"{base['b1'] / ti['ratio_b1']:.3f} | "
                f"{base['b64'] / ti['ratio_b64']:.3f} | {ti['ratio_b64']:.2f}x | "
                f"{ti['accuracy']:.4f} | {ti['agreement']:.4f} |"
            )
        for artifact, label in (("model.onnx", "ORT fp32"), ("model.int8.onnx", "ORT int8")):
            a = s["artifacts"][artifact]
            ms = a["latency_ms"]
            lines.append(
                f"| {name} | {label} | {ms['b1']:.3f} | {ms['b64']:.3f} | "
                f"{a['speedup_vs_torch_eager']['b64']:.2f}x | {a['parity']['accuracy']:.4f} | "
                f"{a['parity']['top1_agreement']:.4f} |"
            )
    for name, res in results.get("32x32", {}).items():
        for variant, row in res["rows"].items():
            lines.append(
                f"| {name} | {variant} | {row['b1']:.3f} | {row['b64']:.3f} | "
                f"{row['speedup_b64']:.2f}x | {fmt(row['accuracy'], '.4f')} | "
                f"{fmt(row['agreement'], '.4f')} |"
            )
    return "\n".join(lines)


def publish(results: dict[str, Any], update_docs: bool) -> None:
    """Print the markdown table; with `update_docs`, put it between docs/export.md's marks."""
    table = table_markdown(results)
    print(table)
    if update_docs:
        text = DOC.read_text()
        begin, end = text.index(MARK[0]) + len(MARK[0]), text.index(MARK[1])
        DOC.write_text(text[:begin] + "\n" + table + "\n" + text[end:])
        print(f"updated {DOC}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--epochs32", type=int, default=6, help="training epochs, 32x32 nets")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="render --out, do not measure")
    args = parser.parse_args()
    if args.table_only:
        publish(json.loads(args.out.read_text()), args.update_docs)
        return
    from slimlab.models.nets import CifarResNet, SmallCNN

    results: dict[str, Any] = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["entry"] = bench_digits_entry(work, args.rounds, args.repeats)
        save(args.out, results)
        train, test = digits32()
        results["32x32"] = {}
        for name, build in (
            ("SmallCNN 32/64/128, 32x32", lambda: SmallCNN(3, 10, widths=(32, 64, 128))),
            ("ResNet-20, 32x32", lambda: CifarResNet(depth=20)),
        ):
            torch.manual_seed(0)
            net = train_plain(build(), train, args.epochs32)
            results["32x32"][name] = bench_model(
                name, net, train, test, work, args.rounds, args.repeats
            )
            save(args.out, results)
    print(f"wrote {args.out}")
    publish(results, args.update_docs)


if __name__ == "__main__":
    sys.exit(main())
