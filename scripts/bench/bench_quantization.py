"""Quantization benchmark: QAT on digits, int8 paths for transformers on CPU, bnb weights.

    python scripts/bench/bench_quantization.py                 # ~15 min on a quiet 2-core CPU
    python scripts/bench/bench_quantization.py --only transformers

1. digits (`--only digits`): trains experiment=digits_cnn (fp32) and experiment=digits_qat
   (10 fp32 + 10 QAT epochs on the PT2E stack, then int8) with the same seed and split;
   reports test accuracy, weights on disk, train time, the run's own QAT report, and checks
   that eval.py of the int8 checkpoint (a fresh process's reload: export, prepare, convert)
   gives the run's test accuracy, timing that reload.
2. transformers (`--only transformers`): which int8 path is fastest on a CPU for a ViT-style
   net and a Hugging Face BERT. Each model is trained briefly in fp32 (digits 8x8 for the ViT,
   a generated token task for BERT: the class is the first token modulo 4), then run as:
   torch fp32 eager; torch.ao dynamic int8 Linear (`quantize_dynamic`); torchao int8
   dynamic-activation/int8-weight (`quantize_`, eager); onnxruntime fp32; onnxruntime dynamic
   int8 (`quantize_dynamic` of the fp32 file, 7-bit weights); onnxruntime static int8 (QDQ,
   calibrated on 8 training batches, as export.py does for float checkpoints); onnxruntime
   int8 of the PT2E QAT network (2 QAT epochs, QDQ with its own scales: the QAT callback's
   path). Test accuracy of each; latency at batch 1 and 64, one thread, median of interleaved
   rounds. `--large` adds latency-only rows for random ViT-Tiny-like and BERT-mini-like
   sizes (`--large-batch`).
3. bitsandbytes (`--only bnb`): post-training int8 / NF4 / FP4 linear weights of the digits MLP.

Results go to --out as JSON (logs/bench/quantization.json, git-ignored) and are printed as
markdown tables (copy them into docs/quantization.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*})
from slimlab.compression.measure import size_on_disk
from slimlab.compression.pt2e import convert_int8, prepare_qat, set_qat_state
from slimlab.inference.exporters import quantize_onnx_int8
from slimlab.inference.latency import latency_table
from slimlab.models.base import call_net, logits_of
from slimlab.utils.compose import QUIET, compose_config
from slimlab.utils.onnx import TENSOR_INPUT, export_onnx, import_extra, onnx_session
from slimlab.utils.run_files import bench_results_path

ROOT = Path(__file__).resolve().parents[2]
EVAL_QUIET = [o for o in QUIET if not o.startswith("callbacks.")]  # eval.yaml has no callbacks


# -- 1. digits: fp32 vs QAT int8 ------------------------------------------------------------------
def eval_in_a_fresh_process(ckpt: str, work: Path) -> tuple[float, float]:
    """(test accuracy, wall seconds) of `python eval.py ckpt_path=<ckpt>` in a new process:
    what a user waits for, the QAT network's export, prepare and convert included."""
    import subprocess
    import sys

    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "eval.py"), f"ckpt_path={ckpt}", "logger=none"]
        + [f"paths.log_dir={work / 'logs'}", "extras.print_config=false"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    (metrics,) = (work / "logs" / "eval").glob("**/metrics.json")
    return float(json.loads(metrics.read_text())["test"]["acc"]), wall


def bench_digits(work: Path) -> dict[str, Any]:
    from slimlab.train import train

    results: dict[str, Any] = {}
    for name in ("digits_cnn", "digits_qat"):
        start = time.perf_counter()
        metrics, objects = train(compose_config([f"experiment={name}", *QUIET], work / name))
        model = objects["model"]
        best = objects["trainer"].checkpoint_callback.best_model_path
        acc, eval_s = eval_in_a_fresh_process(best, work / f"eval_{name}")
        results[name] = {
            "test_acc": float(metrics["test/acc"]),
            "size_bytes": size_on_disk(model.net),
            "train_s": round(time.perf_counter() - start, 1),
            "eval_test_acc": acc,
            "eval_process_s": round(eval_s, 1),
            "report": getattr(model, "compression_report", None),
        }
        print(name, json.dumps(results[name], indent=1, default=str), flush=True)
    return results


# -- 2. transformers: which int8 path is fastest on a CPU ----------------------------------------
class ViT(nn.Module):
    """A ViT: patch embedding, class token, position embeddings, pre-norm encoder blocks
    (multi-head self-attention from Linear q/k/v and scaled_dot_product_attention, GELU MLP)."""

    def __init__(self, size: int, channels: int, patch: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.heads = heads
        self.patches = nn.Conv2d(channels, dim, patch, stride=patch)
        tokens = (size // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm1": nn.LayerNorm(dim),
                    "qkv": nn.Linear(dim, 3 * dim),
                    "proj": nn.Linear(dim, dim),
                    "norm2": nn.LayerNorm(dim),
                    "mlp": nn.Sequential(
                        nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
                    ),
                }
            )
            for _ in range(depth)
        )
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patches(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.position
        b, n, d = t.shape
        for block in self.blocks:
            qkv = block["qkv"](block["norm1"](t)).view(b, n, 3, self.heads, -1).unbind(2)
            a = F.scaled_dot_product_attention(*(u.transpose(1, 2) for u in qkv))
            t = t + block["proj"](a.transpose(1, 2).reshape(b, n, d))
            t = t + block["mlp"](block["norm2"](t))
        return self.head(self.norm(t[:, 0]))


def bert(hidden: int, layers: int, heads: int, length: int) -> nn.Module:
    import transformers

    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=length,
        num_labels=4,
    )
    return transformers.BertForSequenceClassification(config)


def digits_data() -> tuple[Any, Any]:
    from slimlab.data import DigitsDataModule

    dm = DigitsDataModule(seed=42)
    dm.setup("fit")

    def stack(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([a for a, _ in ds]), torch.stack([b for _, b in ds])

    return stack(dm.data_train), stack(dm.data_test)


def token_data(length: int) -> tuple[Any, Any]:
    def make(n: int, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, 100, (n, length), generator=g)
        mask = (torch.rand(n, length, generator=g) > 0.2).long()
        mask[:, 0] = 1
        return {"input_ids": ids, "attention_mask": mask}, ids[:, 0] % 4

    return make(2048, 0), make(512, 1)


def take(x: Any, idx: Any) -> Any:
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def fit(net: nn.Module, data: tuple[Any, torch.Tensor], epochs: int, lr: float = 2e-3) -> None:
    x, y = data
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch))
        for idx in order.split(64):
            loss = F.cross_entropy(logits_of(call_net(net, take(x, idx))), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()


def feed_of(x: Any) -> dict[str, np.ndarray]:
    if isinstance(x, dict):
        return {k: v.numpy() for k, v in x.items()}
    return {TENSOR_INPUT: x.numpy()}


def torch_runner(net: nn.Module) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    @torch.no_grad()
    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        x = {k: torch.from_numpy(v) for k, v in feed.items()}
        return logits_of(call_net(net, x.get(TENSOR_INPUT, x))).numpy()

    return run


def ort_runner(path: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    session = onnx_session(path, threads=1)
    names = [i.name for i in session.get_inputs()]
    return lambda feed: session.run(None, {n: feed[n] for n in names})[0]


def int8_paths(
    net: nn.Module, train: tuple[Any, torch.Tensor], qat_epochs: int, work: Path, stem: str
) -> tuple[dict[str, Callable], dict[str, str]]:
    """Every int8 path for `net` (trained fp32): runners by name, and failures by name."""
    runners: dict[str, Callable] = {"torch fp32 eager": torch_runner(net)}
    failures: dict[str, str] = {}
    example = take(train[0], torch.arange(1))
    torch.backends.quantized.engine = "x86"
    dynamic = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(net), {nn.Linear}, dtype=torch.qint8
    )
    runners["torch.ao dynamic int8 Linear"] = torch_runner(dynamic)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        ao = copy.deepcopy(net)
        quantize_(ao, Int8DynamicActivationInt8WeightConfig())
        runners["torchao int8 dyn-act/int8-weight"] = torch_runner(ao)
    except Exception as exc:  # recorded, not fatal
        failures["torchao int8 dyn-act/int8-weight"] = f"{type(exc).__name__}: {exc}"[:200]
    fp32 = work / f"{stem}.onnx"
    export_onnx(net, example, fp32, opset=20)
    runners["ORT fp32"] = ort_runner(fp32)
    quantization = import_extra("onnxruntime.quantization")
    dynamic_path = work / f"{stem}.dynamic.onnx"
    quantization.quantize_dynamic(
        str(fp32), str(dynamic_path), weight_type=quantization.QuantType.QInt8, reduce_range=True
    )
    runners["ORT dynamic int8"] = ort_runner(dynamic_path)
    calibration = [feed_of(take(train[0], torch.arange(i, i + 64))) for i in range(0, 512, 64)]
    static = work / f"{stem}.static.onnx"
    quantize_onnx_int8(fp32, static, calibration)
    runners["ORT static int8 (ORT calibration)"] = ort_runner(static)
    prepared = prepare_qat(copy.deepcopy(net), example)
    set_qat_state(prepared, fake_quant=True, observe=True)
    fit(prepared, train, qat_epochs, lr=5e-4)
    qat = work / f"{stem}.qat.onnx"
    int8 = convert_int8(prepared)
    runners["torch int8 PT2E (reference ops)"] = torch_runner(int8)
    export_onnx(int8, example, qat, opset=20)
    runners["ORT int8 PT2E QAT (QDQ)"] = ort_runner(qat)
    return runners, failures


def table_rows(
    runners: dict[str, Callable], test: tuple[Any, torch.Tensor], batch: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """Accuracy on `test` and latency at batch 1 and `batch` (interleaved medians, 1 thread)."""
    x, y = test
    rows: dict[str, dict[str, Any]] = {}
    for name, run in runners.items():
        logits = np.concatenate(
            [run(feed_of(take(x, idx))) for idx in torch.arange(len(y)).split(64)]
        )
        rows[name] = {"accuracy": float((logits.argmax(1) == y.numpy()).mean())}
    feeds = {b: feed_of(take(x, torch.arange(b))) for b in (1, batch)}
    latency = latency_table(runners, feeds, rounds=rounds, repeats=5, threads=1)
    base = latency["torch fp32 eager"][f"b{batch}"]
    for name, ms in latency.items():
        rows[name].update(ms)
        rows[name][f"speedup_b{batch}"] = base / ms[f"b{batch}"]
    return rows


def bench_transformers(work: Path, rounds: int, large: bool, large_batch: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    torch.manual_seed(0)
    digits_train, digits_test = digits_data()
    tokens_train, tokens_test = token_data(64)
    models = {
        "ViT 8x8 digits (patch 2, dim 64, depth 2, 4 heads)": (
            ViT(8, 1, 2, 64, 2, 4),
            digits_train,
            digits_test,
            15,
        ),
        "BERT (hidden 128, 2 layers, 4 heads, seq 64)": (
            bert(128, 2, 4, 64),
            tokens_train,
            tokens_test,
            6,
        ),
    }
    for name, (net, train, test, epochs) in models.items():
        start = time.perf_counter()
        fit(net, train, epochs)
        runners, failures = int8_paths(net, train, 2, work, name.split()[0].lower())
        rows = table_rows(runners, test, 64, rounds)
        results[name] = {
            "rows": rows,
            "failures": failures,
            "seconds": time.perf_counter() - start,
        }
        print(name, json.dumps(results[name], indent=1), flush=True)
    if large:  # latency only: random weights, realistic sizes
        torch.manual_seed(0)
        images = (torch.randn(large_batch * 8, 3, 32, 32), torch.zeros(large_batch * 8).long())
        tokens = token_data(128)[1]
        for name, net, data in (
            (
                "ViT-Tiny-like 32x32 (patch 4, dim 192, depth 6, 3 heads), random",
                ViT(32, 3, 4, 192, 6, 3),
                images,
            ),
            (
                "BERT-mini-like (hidden 256, 4 layers, 4 heads, seq 128), random",
                bert(256, 4, 4, 128),
                tokens,
            ),
        ):
            net.eval()
            runners, failures = int8_paths(net, data, 0, work, name.split()[0].lower())
            test = (take(data[0], torch.arange(large_batch)), data[1][:large_batch])
            rows = table_rows(runners, test, large_batch, rounds)
            for row in rows.values():
                row.pop("accuracy")
            results[name] = {"rows": rows, "failures": failures}
            print(name, json.dumps(results[name], indent=1), flush=True)
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
        correct, seen = top1_counts(  # the datamodule normalizes batches after transfer
            candidate, data.test_dataloader(), torch.device("cpu"), transfer=normalize
        )
        results[mode] = {"test_acc": correct / seen, "size_bytes": size_on_disk(candidate)}
    return results


# -- output ---------------------------------------------------------------------------------------
def print_tables(results: dict[str, Any]) -> None:
    if "digits" in results:
        d = results["digits"]
        print(
            "\n| digits CNN | test acc | eval.py (fresh process) | weights on disk | train time |"
        )
        print("| --- | --- | --- | --- | --- |")
        for name, label in (("digits_cnn", "fp32"), ("digits_qat", "QAT -> int8 (PT2E)")):
            r = d[name]
            print(
                f"| {label} ({name}) | {r['test_acc']:.4f} | {r['eval_test_acc']:.4f} in "
                f"{r['eval_process_s']} s | {r['size_bytes']:,} B | {r['train_s']} s |"
            )
    for name, r in results.get("transformers", {}).items():
        batches = sorted({k for row in r["rows"].values() for k in row if k.startswith("b")})
        header = " | ".join(f"{b} ms" for b in batches)
        print(f"\n| {name} | test acc | {header} | vs torch fp32 eager |")
        print("| --- | --- | " + " | ".join("---" for _ in batches) + " | --- |")
        for variant, row in r["rows"].items():
            speedup = next(v for k, v in row.items() if k.startswith("speedup"))
            acc = f"{row['accuracy']:.4f}" if "accuracy" in row else "-"
            times = " | ".join(f"{row[b]:.3f}" for b in batches)
            print(f"| {variant} | {acc} | {times} | {speedup:.2f}x |")
        for variant, reason in r["failures"].items():
            print(f"\n{variant} failed: {reason}")
    if "bnb_weights" in results:
        print("\n| digits MLP, linear weights | test acc | weights on disk |")
        print("| --- | --- | --- |")
        for mode, row in results["bnb_weights"].items():
            print(f"| {mode} | {row['test_acc']:.4f} | {row['size_bytes']:,} B |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["digits", "transformers", "bnb"], default=None)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    parser.add_argument("--large", action="store_true", help="latency of larger random nets")
    parser.add_argument("--large-batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=bench_results_path("quantization"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    results: dict[str, Any] = {"torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    parts: dict[str, Callable[[Path], Any]] = {
        "digits": bench_digits,
        "transformers": lambda w: bench_transformers(w, args.rounds, args.large, args.large_batch),
        "bnb_weights": bench_bnb_weights,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for part, run in parts.items():
            if args.only is None or part.startswith(args.only):
                results[part] = run(Path(tmp) / part)
                args.out.write_text(json.dumps(results, indent=2, default=str))  # kept on failure
    print_tables(results)
    print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
