"""Quantization-stack study: torch.ao FX (today's QAT) vs torchao PT2E, measured on this CPU.

    pip install "torchao==0.18.*"        # the PT2E stack (keeps torch at its version)
    python scripts/bench/study_quant_stack.py                   # every part, ~10 min
    python scripts/bench/study_quant_stack.py --parts qat onnx  # some parts

Parts (results in logs/bench/quant_stack.json; the decision is in docs/quantization.md):

- ``qat``: the digits SmallCNN trained 10 fp32 epochs, then 8 QAT epochs from the same
  weights with each stack (same seeds, data order and optimizer), over --seeds seeds: test
  accuracy of the fp32 net, of FX's int8 model, of PT2E's converted model in torch and of its
  ONNX export under onnxruntime;
- ``step``: the time of one QAT training step (batch 64) on each stack, and of export+prepare;
- ``onnx``: `convert_pt2e` output -> `torch.onnx.export(dynamo=True)`: QDQ node counts, the
  kernels onnxruntime runs (QLinearConv?), and one layer's learned weight scale in torch vs
  the ONNX initializer; FX's converted model through the same exporter;
- ``latency``: 32x32 SmallCNN and ResNet-20, batch 1 and 64, one thread, interleaved medians:
  fp32 eager, FX int8 (x86 kernels), PT2E + X86InductorQuantizer + torch.compile (and its
  compile time), onnxruntime fp32 and int8 (QDQ from PT2E);
- ``checkpoint``: a PT2E-prepared net's state dict through torch.save / torch.load(
  weights_only=True) into a freshly exported and prepared net: keys stable, outputs equal;
- ``ddp``: a PT2E-prepared net trained by Lightning (strategy ddp, gloo, 2 CPU processes),
  checkpointed, resumed (`--ddp-worker` is the subprocess entry);
- ``hf``: torch.export, PT2E prepare and ONNX export of a tiny random Hugging Face
  BertForSequenceClassification.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "logs" / "bench" / "quant_stack.json"
warnings.filterwarnings("ignore")


# -- the two stacks ---------------------------------------------------------------------------
def fx_prepare(net: nn.Module, example: torch.Tensor) -> nn.Module:
    from slimlab.compression.quantization import prepare_qat, set_qat_state

    prepared = prepare_qat(net, example, "x86")
    set_qat_state(prepared, fake_quant=True, observe=True)
    return prepared


def fx_convert(prepared: nn.Module) -> nn.Module:
    from slimlab.compression.quantization import convert_int8

    return convert_int8(prepared, "x86")


def batch_dim() -> dict:
    return {0: torch.export.Dim("batch", min=1, max=4096)}


def pt2e_prepare(net: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    exported = torch.export.export(net.train(), (example,), dynamic_shapes=(batch_dim(),))
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True)
    )
    return prepare_qat_pt2e(exported.module(), quantizer)


def pt2e_ptq(net: nn.Module, example: torch.Tensor, calib: list[torch.Tensor]) -> nn.Module:
    """PT2E post-training static int8 (X86InductorQuantizer), for latency."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    exported = torch.export.export(net.eval(), (example,), dynamic_shapes=(batch_dim(),))
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return convert_pt2e(prepared)


def pt2e_train(gm: nn.Module, train: bool) -> None:
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    (move_exported_model_to_train if train else move_exported_model_to_eval)(gm)


def pt2e_convert(prepared: nn.Module) -> nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model = copy.deepcopy(prepared)
    pt2e_train(model, False)
    return convert_pt2e(model)


def onnx_export(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    program = torch.onnx.export(
        model, (example,), dynamo=True, dynamic_shapes=(batch_dim(),), verbose=False
    )
    program.save(str(path))
    return path


def ort_session(path: Path, profile: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_kernels(path: Path, x: np.ndarray) -> dict[str, int]:
    """op_name -> count of the nodes onnxruntime ran (after its graph optimisations)."""
    session = ort_session(path, profile=True)
    session.run(None, {session.get_inputs()[0].name: x})
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    counts: dict[str, int] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            counts[op] = counts.get(op, 0) + 1
    return counts


# -- digits data ------------------------------------------------------------------------------
def digits(seed: int = 42):
    from slimlab.data import DigitsDataModule

    dm = DigitsDataModule(batch_size=64, seed=seed)
    dm.setup("fit")
    stack = lambda ds: (torch.stack([a for a, _ in ds]), torch.stack([b for _, b in ds]))  # noqa: E731
    return stack(dm.data_train), stack(dm.data_test)


def train_epochs(net, forward, data, epochs: int, lr: float, seed: int) -> None:
    x, y = data
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), 64):
            idx = order[i : i + 64]
            loss = nn.functional.cross_entropy(forward(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def part_qat(seeds: int, work: Path) -> dict[str, Any]:
    from slimlab.compression.quantization import set_qat_state
    from slimlab.models.nets import SmallCNN

    rows = []
    for seed in range(seeds):
        train, (xt, yt) = digits()
        torch.manual_seed(seed)
        net = SmallCNN(1, 10, (32, 64, 128))
        train_epochs(net.train(), net, train, epochs=10, lr=1e-3, seed=seed)
        row = {"seed": seed, "fp32": accuracy(net.eval(), xt, yt)}
        example = train[0][:2]

        start = time.perf_counter()
        fx = fx_prepare(copy.deepcopy(net).train(), example)
        train_epochs(fx, fx, train, epochs=8, lr=1e-4, seed=100 + seed)
        set_qat_state(fx, fake_quant=True, observe=False)
        row["fx_int8"] = accuracy(fx_convert(fx), xt, yt)
        row["fx_s"] = time.perf_counter() - start

        start = time.perf_counter()
        pt = pt2e_prepare(copy.deepcopy(net), example)
        train_epochs(pt, pt, train, epochs=8, lr=1e-4, seed=100 + seed)
        converted = pt2e_convert(pt)
        row["pt2e_int8_torch"] = accuracy(converted, xt, yt)
        row["pt2e_s"] = time.perf_counter() - start
        path = onnx_export(converted, example, work / f"pt2e_qat_{seed}.onnx")
        session = ort_session(path)
        logits = session.run(None, {session.get_inputs()[0].name: xt.numpy()})[0]
        row["pt2e_int8_ort"] = float((logits.argmax(1) == yt.numpy()).mean())
        rows.append(row)
        print("qat", row, flush=True)
    keys = ("fp32", "fx_int8", "pt2e_int8_torch", "pt2e_int8_ort")
    return {"rows": rows, "mean": {k: statistics.mean(r[k] for r in rows) for k in keys}}


def part_onnx(work: Path) -> dict[str, Any]:
    from slimlab.models.nets import SmallCNN

    train, (xt, _) = digits()
    torch.manual_seed(0)
    net = SmallCNN(1, 10, (32, 64, 128))
    example = train[0][:2]
    result: dict[str, Any] = {}
    pt = pt2e_prepare(copy.deepcopy(net), example)
    train_epochs(pt, pt, train, epochs=1, lr=1e-3, seed=0)
    from torchao.quantization.pt2e import disable_observer

    pt.apply(disable_observer)  # ranges frozen, as at the end of QAT (freeze_observer_epoch)
    # the first conv's weight fake-quantizer: its learned per-channel scale
    fq = [m for n, m in pt.named_modules() if hasattr(m, "scale") and m.scale.numel() == 32]
    torch_scale = fq[0].scale.detach().numpy().copy()
    converted = pt2e_convert(pt)
    start = time.perf_counter()
    path = onnx_export(converted, example, work / "pt2e.onnx")
    result["pt2e_export_s"] = time.perf_counter() - start
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    result["pt2e_onnx_ops"] = _count(n.op_type for n in model.graph.node)
    result["opset"] = [o.version for o in model.opset_import if o.domain == ""][0]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    match = [n for n, a in inits.items() if a.shape == torch_scale.shape and a.dtype == np.float32]
    diffs = {n: float(np.abs(inits[n] - torch_scale).max()) for n in match}
    best = min(diffs, key=diffs.get) if diffs else None
    result["scale_torch_first_conv"] = torch_scale[:4].tolist()
    result["scale_onnx_initializer"] = {best: inits[best][:4].tolist()} if best else None
    result["scale_max_abs_diff"] = diffs.get(best) if best else None
    result["ort_kernels_pt2e"] = ort_kernels(path, xt[:64].numpy())

    fx = fx_prepare(copy.deepcopy(net).train(), example)
    fx(example)
    try:
        onnx_export(fx_convert(fx), example, work / "fx.onnx")
        result["fx_int8_onnx"] = "exported"
    except Exception as exc:  # the known failure, recorded
        result["fx_int8_onnx"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    print("onnx", result, flush=True)
    return result


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def part_step(rounds: int) -> dict[str, Any]:
    """Training step time (batch 64, digits SmallCNN): fp32 vs FX QAT vs PT2E QAT, interleaved."""
    from slimlab.models.nets import SmallCNN

    torch.manual_seed(0)
    net, example = SmallCNN(1, 10, (32, 64, 128)), torch.randn(2, 1, 8, 8)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    start = time.perf_counter()
    pt = pt2e_prepare(copy.deepcopy(net), example)
    prepare_s = time.perf_counter() - start
    models = {"fp32": copy.deepcopy(net).train(), "fx": fx_prepare(copy.deepcopy(net), example)}
    models["pt2e"] = pt
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            optimizer = torch.optim.Adam(model.parameters(), 1e-4)
            start = time.perf_counter()
            for _ in range(10):
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            times[name].append((time.perf_counter() - start) / 10 * 1000)
    result = {f"{n}_step_ms": statistics.median(t) for n, t in times.items()}
    result["pt2e_export_and_prepare_s"] = prepare_s
    print("step", result, flush=True)
    return result


# -- latency ----------------------------------------------------------------------------------
def part_latency(rounds: int, repeats: int, work: Path) -> dict[str, Any]:
    from slimlab.models.nets import CifarResNet, SmallCNN

    torch.set_num_threads(1)
    nets = {
        "SmallCNN 32/64/128, 32x32": lambda: SmallCNN(3, 10, widths=(32, 64, 128)),
        "ResNet-20, 32x32": lambda: CifarResNet(depth=20),
    }
    results: dict[str, Any] = {}
    for net_name, build in nets.items():
        torch.manual_seed(0)
        x64 = torch.randn(64, 3, 32, 32)
        net = build().eval()
        calib = [torch.randn(16, 3, 32, 32) for _ in range(4)]
        fx = fx_prepare(copy.deepcopy(net).train(), x64[:2])
        with torch.no_grad():
            for c in calib:
                fx(c)
        variants: dict[str, Any] = {"fp32 eager": net, "int8 torch.ao FX (x86)": fx_convert(fx)}
        ptq = pt2e_ptq(copy.deepcopy(net), x64[:2], calib)
        start = time.perf_counter()
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(ptq)
        try:
            with torch.no_grad():
                compiled(x64[:1])
                compiled(x64)
            variants["int8 PT2E + inductor (compiled)"] = compiled
        except Exception as exc:  # an inductor lowering error: recorded
            results[f"{net_name} inductor_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        compile_s = time.perf_counter() - start
        fp32_compiled = torch.compile(copy.deepcopy(net))
        with torch.no_grad():
            fp32_compiled(x64[:1])
            fp32_compiled(x64)
        variants["fp32 torch.compile"] = fp32_compiled
        import onnxruntime.quantization as oq

        fp32_path = onnx_export(net, x64[:2], work / f"{net_name[:6]}_fp32.onnx")
        variants["ORT fp32"] = ort_session(fp32_path)
        int8_path = onnx_export(ptq, x64[:2], work / f"{net_name[:6]}_pt2e_int8.onnx")
        variants["ORT int8 (QDQ from PT2E)"] = ort_session(int8_path)

        class Reader(oq.CalibrationDataReader):
            def __init__(self, batches=calib):
                self.it = iter([{"x": c.numpy()} for c in batches])

            def get_next(self):
                return next(self.it, None)

        ort_static = work / f"{net_name[:6]}_ort_static.onnx"
        oq.quantize_static(
            str(fp32_path), str(ort_static), Reader(), quant_format=oq.QuantFormat.QDQ,
            per_channel=True, activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
        )  # fmt: skip
        variants["ORT int8 (ORT static QDQ)"] = ort_session(ort_static)

        def run(model, x):
            if hasattr(model, "run"):
                return model.run(None, {model.get_inputs()[0].name: x.numpy()})
            with torch.no_grad():
                return model(x)

        times = {n: {1: [], 64: []} for n in variants}
        for _ in range(rounds):
            for name, model in variants.items():
                for b in (1, 64):
                    xb = x64[:b]
                    run(model, xb)
                    t: list[float] = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        run(model, xb)
                        t.append(time.perf_counter() - start)
                    times[name][b].append(statistics.median(t) * 1000)
        table = {n: {f"b{b}": statistics.median(v[b]) for b in (1, 64)} for n, v in times.items()}
        for row in table.values():
            row["speedup_b64"] = table["fp32 eager"]["b64"] / row["b64"]
        results[net_name] = {"latency_ms": table, "pt2e_inductor_compile_s": compile_s}
        print(net_name, json.dumps(results[net_name], indent=1), flush=True)
    return results


# -- checkpoints ------------------------------------------------------------------------------
def part_checkpoint(work: Path) -> dict[str, Any]:
    from slimlab.models.nets import SmallCNN

    torch.manual_seed(0)
    example = torch.randn(2, 1, 8, 8)
    net = SmallCNN(1, 10, (16, 32))
    fresh = copy.deepcopy(net)
    prepared = pt2e_prepare(net, example)
    train_epochs(
        prepared, prepared, (torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))), 1, 1e-3, 0
    )
    path = work / "prepared.pt"
    torch.save({"state_dict": prepared.state_dict()}, path)
    state = torch.load(path, weights_only=True)["state_dict"]
    again = pt2e_prepare(fresh, example)
    keys_equal = list(state) == list(again.state_dict())
    missing, unexpected = again.load_state_dict(state, strict=False)
    pt2e_train(prepared, False)
    pt2e_train(again, False)
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        same = bool(torch.equal(prepared(x), again(x)))
    result = {
        "weights_only_load": "ok",
        "keys_equal_after_reexport": keys_equal,
        "missing": list(missing),
        "unexpected": list(unexpected),
        "outputs_equal": same,
        "sample_keys": list(state)[:6],
        "n_keys": len(state),
    }
    print("checkpoint", result, flush=True)
    return result


# -- DDP --------------------------------------------------------------------------------------
def ddp_worker(root: str, resume: str | None) -> None:
    """Lightning DDP (gloo, 2 CPU processes) training a PT2E-prepared SmallCNN on digits."""
    import lightning as L

    from slimlab.models.nets import SmallCNN

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = pt2e_prepare(SmallCNN(1, 10, (16, 32)), torch.randn(2, 1, 8, 8))

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    (x, y), _ = digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2 if resume is None else 3,
        default_root_dir=root, enable_progress_bar=False, logger=False, enable_model_summary=False,
        enable_checkpointing=False,
    )  # fmt: skip
    module = Module()
    trainer.fit(module, loader, ckpt_path=resume)
    path = Path(root) / ("resumed.ckpt" if resume else "first.ckpt")
    trainer.save_checkpoint(path)  # collective: every rank calls it
    if trainer.is_global_zero:
        print("DDP_OK", trainer.current_epoch, len(module.net.state_dict()), flush=True)


def part_ddp(work: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    root = work / "ddp"
    for stage, resume in (("fit", None), ("resume", str(root / "first.ckpt"))):
        cmd = [sys.executable, __file__, "--ddp-worker", str(root)]
        if resume:
            cmd += ["--resume", resume]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
        ok = "DDP_OK" in proc.stdout
        result[stage] = {
            "ok": ok,
            "s": round(time.perf_counter() - start, 1),
            "tail": "" if ok else (proc.stdout[-800:] + proc.stderr[-1500:]),
        }
    if result["resume"]["ok"]:
        state = torch.load(root / "resumed.ckpt", weights_only=True)
        result["resumed_epoch"] = state["epoch"]
        result["weights_only_load"] = "ok"
    print("ddp", result, flush=True)
    return result


# -- Hugging Face -----------------------------------------------------------------------------
def part_hf() -> dict[str, Any]:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    inputs = {
        "input_ids": torch.randint(0, 100, (2, 16)),
        "attention_mask": torch.ones(2, 16, dtype=torch.long),
    }
    result: dict[str, Any] = {}
    dims = {k: {0: torch.export.Dim("batch", max=1024)} for k in inputs}
    try:
        ep = torch.export.export(model, (), kwargs=inputs, dynamic_shapes=dims)
        out = ep.module()(**inputs)
        ref = model(**inputs).logits
        result["torch_export"] = "ok"
        result["max_abs_diff"] = float((out.logits - ref).abs().max())
    except Exception as exc:
        result["torch_export"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        return result
    try:
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )

        quantizer = X86InductorQuantizer().set_global(
            get_default_x86_inductor_quantization_config(is_qat=True)
        )
        train_ep = torch.export.export(model.train(), (), kwargs=inputs, dynamic_shapes=dims)
        prepared = prepare_qat_pt2e(train_ep.module(), quantizer)
        prepared(**inputs).logits.sum().backward()
        result["pt2e_qat_prepare_and_backward"] = "ok"
        result["fake_quantizers"] = sum(
            1 for n, _ in prepared.named_modules() if "activation_post_process" in n
        )
    except Exception as exc:
        result["pt2e_qat_prepare_and_backward"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    try:
        program = torch.onnx.export(
            model.eval(), (), kwargs=inputs, dynamo=True, dynamic_shapes=dims
        )
        result["onnx_export_fp32"] = f"ok ({len(program.model.graph)} nodes)"
    except Exception as exc:
        result["onnx_export_fp32"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    print("hf", result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = ["qat", "step", "onnx", "latency", "checkpoint", "ddp", "hf"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--resume", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.resume)
        return
    import torchao

    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["versions"] = {"torch": torch.__version__, "torchao": torchao.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for part in args.parts:
            try:
                if part == "qat":
                    results[part] = part_qat(args.seeds, work)
                elif part == "step":
                    results[part] = part_step(args.rounds)
                elif part == "onnx":
                    results[part] = part_onnx(work)
                elif part == "latency":
                    results[part] = part_latency(args.rounds, args.repeats, work)
                elif part == "checkpoint":
                    results[part] = part_checkpoint(work)
                elif part == "ddp":
                    results[part] = part_ddp(work)
                elif part == "hf":
                    results[part] = part_hf()
            except Exception:
                results[part] = {"error": traceback.format_exc()[-2000:]}
                print(part, "ERROR", results[part]["error"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
