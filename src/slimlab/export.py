"""The export entry: a checkpoint to ONNX (fp32, int8 QDQ) and a torch.export program, checked.

Timeline of `python export.py ckpt_path=<file>`:

1. the settings are checked (format, quantize, opset, thresholds, ...) before anything heavy;
2. the checkpoint is resolved (a path, `latest`, `best`), the output folder chosen
   (`<run>/export/` beside `checkpoints/`, or `output_dir=`) and the files to write listed;
   any that exists stops the export unless `overwrite=true`, and nothing is touched;
3. the checkpoint is opened into its own (dense, pruned, distilled, QAT) network; kinds that
   cannot export are refused with the reason (bitsandbytes weights). A QAT checkpoint gives
   two networks: its int8 one (converted, with the scales QAT learned) and that network's
   fp32 view (no activation quantization, dequantized weights);
4. its data config gives the preprocessing, the training split's drift reference and
   calibration batches, and the test split for parity;
5. each artifact is written under a temporary name: `model.onnx` (dynamo exporter),
   `model.int8.onnx` (a QAT checkpoint's own int8 network, QDQ; else onnxruntime static
   quantization of model.onnx, or its dynamic quantization with quantize=int8_dynamic),
   `model.pt2` (torch.export; skipped with the reason where it cannot export); each is
   compared with the PyTorch network it came from on the test split and timed (interleaved
   medians, one thread);
6. passing artifacts take their names, failing ones `<name>.failed`; `export.json` records
   everything; a parity failure exits 1 with the numbers.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*} before Hydra composes)
from slimlab.compression.pt2e import REDUCED_RANGE_BACKENDS, convert_int8, float_view
from slimlab.inference.checkpoint import datamodule_of, open_checkpoint
from slimlab.inference.data import describe_data, input_spec, model_batches
from slimlab.inference.exporters import (
    CALIBRATION_METHODS,
    ExportFailed,
    export_onnx,
    export_pt2,
    onnx_signature,
    quantize_onnx_dynamic,
    quantize_onnx_int8,
)
from slimlab.inference.latency import latency_table
from slimlab.inference.parity import parity
from slimlab.inference.predictor import EXPORT_JSON
from slimlab.inference.runtime import as_feed, onnx_runner, onnx_session, torch_runner
from slimlab.models.base import count_parameters
from slimlab.utils.checkpoints import find_best_checkpoint, resolve_checkpoint
from slimlab.utils.errors import ConfigError, require
from slimlab.utils.logging import get_logger
from slimlab.utils.run_files import write_json_atomic
from slimlab.utils.task import apply_extras, task_wrapper

log = get_logger(__name__)

FORMATS = ("all", "onnx", "pt2")
QUANTIZE = (None, "int8", "int8_dynamic")
OPSETS = range(18, 24)
FP32, INT8, PT2 = "model.onnx", "model.int8.onnx", "model.pt2"
# structure kinds whose network no exporter takes, and why
UNEXPORTABLE = {
    "bnb": (
        "it holds bitsandbytes 8/4-bit linear layers, which no ONNX exporter handles. Export "
        "the checkpoint saved before bnb_weights, with quantize=int8 for int8"
    ),
}


def threshold_of(settings: dict[str, Any], artifact: str) -> float:
    """The top-1 agreement an artifact must reach (model.pt2 is held to the fp32 one)."""
    return settings["thresholds"].get(artifact, settings["thresholds"][FP32])


class ParityFailed(RuntimeError):
    """An artifact disagrees with the PyTorch model beyond the configured threshold."""


def check_settings(cfg: DictConfig) -> dict[str, Any]:
    """Validate every export setting (before anything heavy); return them as plain values."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError(
            "ckpt_path is missing: give ckpt_path=<a .ckpt written by train.py>, "
            "ckpt_path=latest or ckpt_path=best (with name=<experiment name>)"
        )
    fmt = cfg.get("format")
    require(fmt in FORMATS, f"format={fmt!r} is not supported: give one of {list(FORMATS)}")
    quantize = cfg.get("quantize")
    quantize = None if quantize in (None, "none", "null") else quantize
    require(
        quantize in QUANTIZE,
        f"quantize={quantize!r} is not supported: give int8 (static, calibrated), "
        "int8_dynamic (int8 weights, activations quantized per call, no calibration), or "
        "null for fp32 only",
    )
    require(
        quantize is None or fmt in ("all", "onnx"),
        f"quantize={quantize} writes model.int8.onnx, which format={fmt} leaves out: "
        "give format=onnx or format=all",
    )
    opset = cfg.get("opset")
    require(
        isinstance(opset, int) and opset in OPSETS,
        f"opset={opset} is not supported: give an ONNX opset in {OPSETS.start}..{OPSETS.stop - 1}",
    )
    batches = cfg.get("calibration_batches")
    require(
        isinstance(batches, int) and batches >= 1,
        f"calibration_batches={batches} is out of range: give an integer >= 1",
    )
    method = cfg.get("calibration_method")
    require(
        method in CALIBRATION_METHODS,
        f"calibration_method={method!r} is not supported: give one of {list(CALIBRATION_METHODS)}",
    )
    reduce_range = cfg.get("reduce_range")
    require(
        isinstance(reduce_range, bool),
        f"reduce_range={reduce_range!r} is not a boolean: give true or false",
    )
    par = cfg.get("parity") or {}
    for key in ("fp32_agreement", "int8_agreement"):
        value = par.get(key)
        require(
            isinstance(value, int | float) and 0.0 <= float(value) <= 1.0,
            f"parity.{key}={value} is out of range: give a fraction in [0, 1]",
        )
    require(
        par.get("batches") is None or (isinstance(par.get("batches"), int) and par.batches >= 1),
        f"parity.batches={par.get('batches')} is out of range: give an integer >= 1, or null",
    )
    lat = cfg.get("latency") or {}
    sizes = list(lat.get("batch_sizes") or [])
    require(
        all(isinstance(b, int) and b >= 1 for b in sizes),
        f"latency.batch_sizes={sizes} is invalid: give positive integers, or [] for none",
    )
    for key in ("rounds", "repeats", "threads"):
        value = lat.get(key, 1)
        require(
            isinstance(value, int) and value >= 1,
            f"latency.{key}={value} is out of range: give an integer >= 1",
        )
    return {
        "format": fmt,
        "quantize": quantize,
        "opset": opset,
        "calibration_batches": batches,
        "calibration_method": method,
        "reduce_range": reduce_range,
        "thresholds": {FP32: float(par.fp32_agreement), INT8: float(par.int8_agreement)},
        "parity_batches": par.get("batches"),
        "latency": {
            "batch_sizes": sizes,
            "rounds": lat.get("rounds", 5),
            "repeats": lat.get("repeats", 10),
            "threads": lat.get("threads", 1),
        },
    }


def resolve_ckpt(cfg: DictConfig) -> Path:
    """The checkpoint file `ckpt_path` names: a path, `latest` or `best` of experiment `name`."""
    if str(cfg.ckpt_path) == "best":
        return find_best_checkpoint(cfg.paths.log_dir, "train", cfg.name)
    path = resolve_checkpoint(str(cfg.ckpt_path), cfg.paths.log_dir, "train", cfg.name)
    assert path is not None
    return Path(path)


def output_folder(cfg: DictConfig, ckpt: Path) -> Path:
    """`output_dir`, else `<run>/export` for `<run>/checkpoints/x.ckpt`, else beside the file."""
    if cfg.get("output_dir"):
        return Path(cfg.output_dir).expanduser()
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run / "export"


def planned_files(settings: dict[str, Any], qat: bool = False) -> list[str]:
    """The artifact names this export writes (export.json comes on top); a QAT checkpoint is
    int8 already, so it writes model.int8.onnx whatever `quantize` says."""
    files = []
    if settings["format"] in ("all", "onnx"):
        files.append(FP32)
        if settings["quantize"] or qat:
            files.append(INT8)
    if settings["format"] in ("all", "pt2"):
        files.append(PT2)
    return files


def refuse_existing(folder: Path, names: list[str], overwrite: bool) -> None:
    """Stop before writing anything when a file this export would write exists already."""
    if overwrite or not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"output_dir={folder} is a file: give a folder (or a new path)")
    clashes = [n for name in [*names, EXPORT_JSON] for n in (name, f"{name}.failed")]
    existing = [n for n in clashes if (folder / n).exists()]
    if existing:
        raise ConfigError(
            f"output_dir={folder} already holds {existing}: give overwrite=true to replace "
            "them, or output_dir=<another folder>"
        )


def holds_qat(ckpt: Path) -> bool:
    """Whether the checkpoint records QAT (read cheaply, before the network is rebuilt; a file
    that cannot be read is reported by `open_checkpoint`)."""
    try:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        entries = (saved.get("slimlab") or {}).get("structure") or []
    except Exception:
        return False
    return any(isinstance(e, dict) and e.get("kind") == "qat" for e in entries)


def export_networks(module: Any) -> tuple[torch.nn.Module, torch.nn.Module | None, str | None]:
    """(fp32 network, int8 network or None, QAT backend or None) to export from `module`.

    A float checkpoint is its own fp32 network. A QAT checkpoint's int8 network is the
    converted graph (converted here from a QAT-prepared checkpoint), carrying the scales QAT
    learned; its fp32 network is that graph's fp32 view.
    """
    entries = [e for e in module.structure_log if e.get("kind") == "qat"]
    if not entries:
        return module.net.eval(), None, None
    int8 = module.net if entries[-1]["stage"] == "convert" else convert_int8(module.net)
    return float_view(int8).eval(), int8.eval(), entries[-1].get("backend")


def refuse_unexportable(module: Any, ckpt: Path) -> None:
    """Refuse checkpoints whose network no exporter here can take, saying why."""
    for entry in module.structure_log:
        reason = UNEXPORTABLE.get(entry.get("kind"))
        if reason:
            raise ConfigError(f"ckpt_path={ckpt} cannot be exported: {reason}")


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the checkpoint `cfg.ckpt_path`; return the content of export.json."""
    settings = check_settings(cfg)
    started = time.perf_counter()
    ckpt = resolve_ckpt(cfg)
    folder = output_folder(cfg, ckpt)
    names = planned_files(settings, qat=holds_qat(ckpt))
    refuse_existing(folder, names, bool(cfg.get("overwrite")))
    log.info(f"Loading <{ckpt}>")
    module = open_checkpoint(ckpt, cfg.get("model_class"))
    refuse_unexportable(module, ckpt)
    data_cfg = cfg.get("data")
    data_cfg = OmegaConf.to_container(data_cfg, resolve=True) if data_cfg is not None else None
    datamodule = datamodule_of(module, data_cfg)
    num_classes = int(module.hparams.get("num_classes", 0))
    described = describe_data(datamodule, num_classes)
    net, int8_net, backend = export_networks(module)
    example = module.example_input_array
    tests = [
        (as_feed(x), y.numpy())
        for x, y in model_batches(datamodule, "test", settings["parity_batches"])
    ]

    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    # hidden names with the real suffix (torch.export.save wants .pt2)
    temporary = {name: folder / f".tmp.{name}" for name in names}
    try:
        manifest, torch_latency = _write_artifacts(
            settings, (net, int8_net, backend), example, datamodule, tests, temporary
        )
    except BaseException:
        for path in temporary.values():
            path.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    failed = [n for n, a in manifest.items() if a.get("passed") is False]
    for name, path in temporary.items():
        if path.exists():
            path.replace(folder / (f"{name}.failed" if name in failed else name))
    run = module.run_config or {}
    summary = {
        "version": 1,
        "name": run.get("name"),
        "checkpoint": str(ckpt),
        "model_class": type(module).__module__ + "." + type(module).__name__,
        "net": type(module.net).__name__,
        "params": count_parameters(module.net),
        "num_classes": num_classes,
        "inputs": input_spec(example, described["preprocessing"]),
        "preprocessing": described["preprocessing"],
        "reference": described.get("reference"),
        "settings": {k: v for k, v in settings.items() if k != "thresholds"},
        "thresholds": settings["thresholds"],
        "artifacts": manifest,
        "torch_latency_ms": torch_latency,  # the fp32 network in PyTorch, eager
        "passed": not failed,
        "export_s": round(time.perf_counter() - started, 2),
        "versions": _versions(),
    }
    write_json_atomic(folder / EXPORT_JSON, summary)
    log.info(f"Exported to {folder}: {', '.join(sorted(manifest))}")
    if failed:
        lines = [
            f"{n}: top-1 agreement {manifest[n]['parity']['top1_agreement']:.4f} < "
            f"{threshold_of(settings, n):.4f}, max abs logit diff "
            f"{manifest[n]['parity']['max_abs_logit_diff']:.4g}, accuracy "
            f"{manifest[n]['parity']['accuracy']:.4f} (torch "
            f"{manifest[n]['parity']['accuracy_torch']:.4f}); kept as {folder / (n + '.failed')}"
            for n in failed
        ]
        raise ParityFailed("parity check failed:\n  " + "\n  ".join(lines))
    return summary


def _write_artifacts(
    settings: dict[str, Any],
    networks: tuple[torch.nn.Module, torch.nn.Module | None, str | None],
    example: Any,
    datamodule: Any,
    tests: list,
    temporary: dict[str, Path],
) -> tuple[dict[str, dict[str, Any]], dict[str, float] | None]:
    """Write, check and time every planned artifact under its temporary name.

    `networks` is (fp32 network, a QAT checkpoint's int8 network or None, its QAT backend):
    each artifact is compared with the PyTorch network it was made from.
    """
    net, int8_net, backend = networks
    threads = settings["latency"]["threads"]
    manifest: dict[str, dict[str, Any]] = {}
    runners = {}
    if FP32 in temporary:
        log.info(f"Exporting {FP32} (opset {settings['opset']})")
        export_onnx(net, example, temporary[FP32], settings["opset"])
        manifest[FP32] = {"format": "onnx", "precision": "fp32"}
        runners[FP32] = onnx_runner(onnx_session(str(temporary[FP32]), threads))
    if INT8 in temporary:
        quantization = _write_int8(settings, int8_net, backend, example, datamodule, temporary)
        manifest[INT8] = {"format": "onnx", "precision": "int8", "quantization": quantization}
        runners[INT8] = onnx_runner(onnx_session(str(temporary[INT8]), threads))
    if PT2 in temporary:
        log.info(f"Exporting {PT2} (torch.export)")
        try:
            program = export_pt2(int8_net or net, example, temporary[PT2])
            precision = "fp32" if int8_net is None else "int8"
            manifest[PT2] = {"format": "torch.export", "precision": precision}
            runners[PT2] = torch_runner(torch.export.load(str(temporary[PT2])).module())
            del program
        except ExportFailed as exc:
            temporary[PT2].unlink(missing_ok=True)
            manifest[PT2] = {"format": "torch.export", "skipped": str(exc)}
            log.warning(f"{PT2} skipped: {exc}")

    reference = torch_runner(net)
    log.info(f"Parity on the test split ({sum(len(y) for _, y in tests)} samples)")
    if int8_net is None:
        checks = parity(reference, runners, tests)
    else:  # the int8 artifacts against the int8 network, model.onnx against its fp32 view
        of_int8 = {n: r for n, r in runners.items() if n != FP32}
        checks = parity(torch_runner(int8_net), of_int8, tests)
        checks.update(parity(reference, {n: r for n, r in runners.items() if n == FP32}, tests))
    for name, check in checks.items():
        check["reference"] = "torch fp32" if int8_net is None or name == FP32 else "torch int8"
        threshold = threshold_of(settings, name)
        manifest[name]["parity"] = check
        manifest[name]["passed"] = check["top1_agreement"] >= threshold
        manifest[name]["size_bytes"] = temporary[name].stat().st_size
        if name.endswith(".onnx"):
            manifest[name].update(onnx_signature(temporary[name]))
    sizes = settings["latency"]["batch_sizes"]
    if sizes:
        feeds = {b: _feed_of_size(tests, b) for b in sizes}
        table = latency_table(
            {"torch fp32 eager": reference, **runners},
            feeds,
            settings["latency"]["rounds"],
            settings["latency"]["repeats"],
            threads,
        )
        base = table["torch fp32 eager"]
        for name in runners:
            manifest[name]["latency_ms"] = table[name]
            manifest[name]["speedup_vs_torch_eager"] = {
                k: base[k] / v for k, v in table[name].items() if v > 0
            }
        return manifest, base
    return manifest, None


def _write_int8(
    settings: dict[str, Any],
    int8_net: torch.nn.Module | None,
    backend: str | None,
    example: Any,
    datamodule: Any,
    temporary: dict[str, Path],
) -> dict[str, str]:
    """Write model.int8.onnx under its temporary name; return how it was quantized.

    A QAT checkpoint's int8 network is exported as it is; a float network's model.onnx is
    quantized by onnxruntime, statically (`quantize=int8`, calibrated) or dynamically
    (`quantize=int8_dynamic`).
    """
    bits = " (7-bit range: reduce_range)" if settings["reduce_range"] else ""
    if int8_net is not None:
        if settings["quantize"] not in (None, "int8"):
            log.info(f"quantize={settings['quantize']} does not apply: the checkpoint is QAT")
        log.info(f"Exporting {INT8} (the QAT checkpoint's int8 network and scales)")
        export_onnx(int8_net, example, temporary[INT8], settings["opset"])
        return {
            "method": "quantization-aware training (torchao PT2E), QDQ",
            "weights": "int8, symmetric, per output channel"
            + (" (7-bit range)" if backend in REDUCED_RANGE_BACKENDS else ""),
            "activations": "uint8, affine, per tensor",
            "calibration": "none: the scales QAT learned, as the checkpoint holds them",
        }
    if settings["quantize"] == "int8_dynamic":
        log.info(f"Quantizing {INT8} (dynamic: MatMul/Gemm weights)")
        quantize_onnx_dynamic(temporary[FP32], temporary[INT8], settings["reduce_range"])
        return {
            "method": "onnxruntime dynamic quantization (MatMul/Gemm; convolutions stay fp32)",
            "weights": "int8, symmetric, per tensor" + bits,
            "activations": "uint8, each layer's input quantized per call",
            "calibration": "none: activation ranges are taken at run time",
        }
    log.info(f"Quantizing {INT8} ({settings['calibration_batches']} calibration batches)")
    calibration = [
        as_feed(x) for x, _ in model_batches(datamodule, "train", settings["calibration_batches"])
    ]
    quantize_onnx_int8(
        temporary[FP32],
        temporary[INT8],
        calibration,
        settings["calibration_method"],
        settings["reduce_range"],
    )
    return {
        "method": "onnxruntime static quantization (QDQ)",
        "weights": "int8, symmetric, per output channel" + bits,
        "activations": "uint8, affine, per tensor",
        "calibration": f"{len(calibration)} training-split batches, "
        f"{settings['calibration_method']}",
    }


def _feed_of_size(tests: list, batch: int) -> dict[str, np.ndarray]:
    """A feed of `batch` test samples (repeated when the split is smaller)."""
    first = tests[0][0]
    joined = {k: np.concatenate([feed[k] for feed, _ in tests]) for k in first}
    return {k: np.resize(v, (batch, *v.shape[1:])) for k, v in joined.items()}


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"torch": torch.__version__}
    for package in ("onnx", "onnxruntime", "onnxscript"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[package] = md.version(package)
    return out


@task_wrapper
def main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra task: extras, then export; a failed export prints one message and exits 1."""
    check_settings(cfg)
    apply_extras(cfg)
    try:
        return export(cfg)
    except (ExportFailed, ParityFailed) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from exc
