"""export.py: float checkpoints to ONNX fp32, int8 QDQ and .pt2; parity; bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import DIGITS_TINY, NO_BARS, compose_config, run_cli
from slimlab.export import export, refuse_unexportable
from slimlab.utils.errors import ConfigError

ORT_INT8_KERNELS = {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger"}


def export_cfg(tmp_path: Path, *overrides: str):
    return compose_config(tmp_path, list(overrides), config_name="export")


def trained_ckpt(tmp_path: Path, overrides: list[str]) -> str:
    """The best checkpoint of a train.py run of `overrides` under tmp_path/train."""
    from slimlab.train import train

    _, objects = train(compose_config(tmp_path / "train", overrides))
    return objects["trainer"].checkpoint_callback.best_model_path


def ort_kernels(path: Path, x: np.ndarray) -> set[str]:
    """The kernels onnxruntime runs for `path` (after its graph optimisations)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / "profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"input": x})
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    return {e["args"]["op_name"] for e in events if e.get("cat") == "Node"}


# -- bad input: refused before anything heavy, nothing written -----------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("format=tflite", "format='tflite' is not supported"),
        ("quantize=int4", "quantize='int4' is not supported"),
        ("opset=11", "opset=11 is not supported"),
        ("calibration_batches=0", "calibration_batches=0 is out of range"),
        ("calibration_method=mse", "calibration_method='mse'"),
        ("parity.fp32_agreement=1.5", "parity.fp32_agreement=1.5 is out of range"),
        ("latency.threads=0", "latency.threads=0"),
        ("reduce_range=maybe", "reduce_range='maybe' is not a boolean"),
    ],
)
def test_bad_settings_name_the_key(tmp_path: Path, override: str, message: str) -> None:
    cfg = export_cfg(tmp_path, f"ckpt_path={tmp_path / 'missing.ckpt'}", override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        export(cfg)


def test_bad_checkpoints_are_named(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    cases = {
        tmp_path / "missing.ckpt": "does not exist",
        corrupt: "could not be read as a checkpoint",
        foreign: "is not a SlimLab checkpoint",
    }
    for path, message in cases.items():
        cfg = export_cfg(tmp_path, f"ckpt_path={path}", f"output_dir={tmp_path / 'out'}")
        with pytest.raises(ConfigError, match=message) as info:
            export(cfg)
        assert str(path) in str(info.value)
    assert not (tmp_path / "out").exists()


def test_bnb_checkpoints_are_refused_with_the_reason(compose_cfg) -> None:
    from hydra.utils import instantiate

    module = instantiate(compose_cfg([]).model, _recursive_=False)
    module.structure_log.append({"kind": "bnb", "mode": "nf4"})
    with pytest.raises(ConfigError, match="bitsandbytes"):
        refuse_unexportable(module, Path("run.ckpt"))


@pytest.mark.slow
def test_cli_bad_value_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = run_cli("export.py", ["ckpt_path=x.ckpt", "quantize=int4"], tmp_path, check=False)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("Error: quantize='int4' is not supported")
    )
    assert "Traceback" not in proc.stderr


# -- the dense checkpoint: every artifact, parity, latency, refusing to overwrite ---------------
@pytest.mark.slow
def test_dense_checkpoint_exports_every_artifact(digits_export: Path, digits_ckpt: Path) -> None:
    manifest = json.loads((digits_export / "export.json").read_text())
    assert manifest["passed"] and manifest["checkpoint"] == str(digits_ckpt)
    artifacts = manifest["artifacts"]
    for name in ("model.onnx", "model.int8.onnx", "model.pt2"):
        assert (digits_export / name).is_file(), name
        assert artifacts[name]["size_bytes"] == (digits_export / name).stat().st_size
        assert artifacts[name]["latency_ms"]["b1"] > 0 and artifacts[name]["latency_ms"]["b64"] > 0
    fp32, int8 = artifacts["model.onnx"], artifacts["model.int8.onnx"]
    # fp32: the same numbers as torch; int8: the same answers within the default threshold
    assert (
        fp32["parity"]["top1_agreement"] >= 0.995 and fp32["parity"]["max_abs_logit_diff"] < 1e-3
    )
    assert int8["parity"]["top1_agreement"] >= 0.99
    assert abs(int8["parity"]["accuracy"] - int8["parity"]["accuracy_torch"]) <= 0.02
    assert fp32["opset"] == 20 and fp32["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    assert fp32["outputs"][0]["shape"] == ["batch", 10]
    # int8 is QDQ, 3x+ smaller, and onnxruntime runs it with int8 kernels
    assert int8["quantize_linear_nodes"] > 0 and int8["dequantize_linear_nodes"] > 0
    assert int8["size_bytes"] < fp32["size_bytes"]
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    assert ORT_INT8_KERNELS & ort_kernels(digits_export / "model.int8.onnx", x)
    # the torch.export program reloads and computes what the checkpoint does
    from slimlab.models.base import load_module

    program = torch.export.load(str(digits_export / "model.pt2")).module()
    net = load_module(str(digits_ckpt)).net.eval()
    with torch.no_grad():
        torch.testing.assert_close(program(torch.from_numpy(x)), net(torch.from_numpy(x)))
    # what a service needs: raw preprocessing and the drift reference of the training split
    assert manifest["preprocessing"]["std"][0] > 1  # digits pixels are 0..16
    assert abs(sum(manifest["reference"]["class_prior"]) - 1) < 1e-9
    assert 0 < manifest["reference"]["input_mean"][0] < 16


@pytest.mark.slow
def test_existing_files_are_kept_unless_overwrite(
    digits_export: Path, digits_ckpt: Path, tmp_path: Path
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in digits_export.iterdir()}
    args = [f"ckpt_path={digits_ckpt}", f"output_dir={digits_export}", "format=onnx"]
    with pytest.raises(ConfigError, match="already holds") as info:
        export(export_cfg(tmp_path, *args))
    assert "overwrite=true" in str(info.value)
    assert {p.name: p.stat().st_mtime_ns for p in digits_export.iterdir()} == before
    # overwrite=true replaces only what this export writes
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in digits_export.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    os.utime(copy / "model.pt2", ns=(1, 1))
    args = [
        f"ckpt_path={digits_ckpt}",
        f"output_dir={copy}",
        "format=onnx",
        "latency.batch_sizes=[]",
    ]
    summary = export(export_cfg(tmp_path / "again", *args, "overwrite=true"))
    assert sorted(summary["artifacts"]) == ["model.onnx"]
    assert (copy / "model.pt2").stat().st_mtime_ns == 1  # not part of this export: untouched


@pytest.mark.slow
def test_parity_failure_keeps_the_artifact_as_failed(
    digits_ckpt: Path, tmp_path: Path, monkeypatch
) -> None:
    import onnx
    from onnx import numpy_helper

    import slimlab.export as export_entry
    from slimlab.export import ParityFailed

    def broken_quantizer(fp32_path, int8_path, calibration, method, reduce_range):
        """An int8 file whose classifier weights are negated: real, wrong answers."""
        model = onnx.load(str(fp32_path))
        for init in model.graph.initializer:
            if init.name.startswith("classifier"):
                init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
        onnx.save(model, str(int8_path))

    monkeypatch.setattr(export_entry, "quantize_onnx_int8", broken_quantizer)
    out = tmp_path / "out"
    cfg = export_cfg(
        tmp_path,
        f"ckpt_path={digits_ckpt}",
        f"output_dir={out}",
        "format=onnx",
        "quantize=int8",
        "latency.batch_sizes=[]",
    )
    with pytest.raises(ParityFailed, match=r"model.int8.onnx: top-1 agreement 0\.\d+ < 0\.9900"):
        export(cfg)
    assert (out / "model.onnx").is_file() and (out / "model.int8.onnx.failed").is_file()
    assert not (out / "model.int8.onnx").exists()
    manifest = json.loads((out / "export.json").read_text())
    assert (
        manifest["passed"] is False and manifest["artifacts"]["model.int8.onnx"]["passed"] is False
    )


# -- the other float kinds: pruned and distilled students ---------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pruned", "distilled"])
def test_pruned_and_distilled_checkpoints_export(
    kind: str, digits_ckpt: Path, tmp_path: Path
) -> None:
    from slimlab.train import train

    compression = {
        "pruned": [
            "compression=prune",
            "compression.prune.start_epoch=1",
            "compression.prune.report.latency=false",
        ],
        "distilled": [
            "compression=distill",
            f"compression.distill.teacher_ckpt={digits_ckpt}",
            "model.net.widths=[8,16]",
        ],
    }[kind]
    overrides = [*DIGITS_TINY, "trainer.max_epochs=6", "test=false", *compression]
    cfg = compose_config(tmp_path / "train", overrides)
    _, objects = train(cfg)
    ckpt = objects["trainer"].checkpoint_callback.best_model_path
    if kind == "pruned":
        assert objects["model"].net.classifier.in_features < 32  # the checkpoint is smaller
    out = tmp_path / "export"
    summary = export(
        export_cfg(
            tmp_path,
            f"ckpt_path={ckpt}",
            f"output_dir={out}",
            "format=onnx",
            "quantize=int8",
            "latency.batch_sizes=[64]",
        )
    )
    assert summary["passed"]
    from slimlab.models.base import count_parameters, load_module

    assert summary["params"] < count_parameters(load_module(str(digits_ckpt)).net)
    for name in ("model.onnx", "model.int8.onnx"):
        assert (out / name).is_file()
    x = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    assert ORT_INT8_KERNELS & ort_kernels(out / "model.int8.onnx", x)


# -- QAT: the checkpoint's own int8 network and scales -------------------------------------------
def onnx_constants(path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    """The ONNX graph and every constant it holds (initializers and Constant nodes), by name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return model.graph, constants


def first_conv_weight_fake_quant(net: torch.fx.GraphModule) -> Any:
    """The fake quantizer of the first convolution's weight in a QAT-prepared graph."""
    conv = next(n for n in net.graph.nodes if n.target == torch.ops.aten.conv2d.default)
    node = conv.args[1]
    while node.op != "call_module":  # through the simulated conv-bn fusion's scaling
        node = next(a for a in node.args if isinstance(a, torch.fx.Node))
    return net.get_submodule(node.target)


@pytest.mark.slow
def test_qat_checkpoint_exports_its_own_int8_network_and_learned_scales(
    digits_qat_ckpt: Path, digits_qat_export: Path
) -> None:
    from slimlab.models.base import load_module

    manifest = json.loads((digits_qat_export / "export.json").read_text())
    assert manifest["passed"] and manifest["checkpoint"] == str(digits_qat_ckpt)
    artifacts = manifest["artifacts"]
    int8, fp32, pt2 = (artifacts[n] for n in ("model.int8.onnx", "model.onnx", "model.pt2"))
    assert int8["quantization"]["calibration"].startswith("none")  # not recalibrated
    assert int8["precision"] == pt2["precision"] == "int8"
    # onnxruntime's int8 kernels answer as the int8 checkpoint does, at its accuracy
    assert int8["parity"]["reference"] == "torch int8"
    assert int8["parity"]["top1_agreement"] >= 0.99
    assert abs(int8["parity"]["accuracy"] - int8["parity"]["accuracy_torch"]) <= 0.01
    assert pt2["parity"]["top1_agreement"] == 1.0
    assert fp32["parity"]["reference"] == "torch fp32" and fp32["passed"]
    x = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    assert {"QLinearConv"} <= ort_kernels(digits_qat_export / "model.int8.onnx", x)

    # the scales are the ones QAT learned: those of the QAT network of the same epoch
    prepared = load_module(str(digits_qat_ckpt).replace("-int8.ckpt", ".ckpt")).net
    graph, constants = onnx_constants(digits_qat_export / "model.int8.onnx")
    first_q = next(n for n in graph.node if n.op_type == "QuantizeLinear")
    input_scale = float(np.asarray(constants[first_q.input[1]]).ravel()[0])
    assert input_scale == pytest.approx(float(prepared.activation_post_process_0.scale), rel=1e-6)
    conv = next(n for n in graph.node if n.op_type == "Conv")
    weight_dq = next(n for n in graph.node if n.output[0] == conv.input[1])
    onnx_weight_scales = np.asarray(constants[weight_dq.input[1]])
    learned = first_conv_weight_fake_quant(prepared).scale.numpy()
    np.testing.assert_allclose(onnx_weight_scales, learned, rtol=0.01)


@pytest.mark.slow  # ~1.5 min: a tiny BERT teacher, then heads pruned + KD + QAT in one run
def test_tiny_bert_pruned_distilled_and_qat_reloads_and_exports_with_parity(
    tmp_path: Path,
) -> None:
    from slimlab.eval import evaluate
    from slimlab.train import train

    teacher = trained_ckpt(
        tmp_path / "teacher", ["experiment=text_tiny_bert", "trainer.max_epochs=2", *NO_BARS]
    )
    overrides = [
        "experiment=text_tiny_bert_compress",  # the "one command"
        f"compression.distill.teacher_ckpt={teacher}",
        "trainer.max_epochs=3",
        "compression.prune.report.latency=false",
        "compression.distill.report.latency=false",
        "compression.qat.start_epoch=1",
        "compression.qat.freeze_observer_epoch=2",
        "compression.qat.report.latency=false",
        *NO_BARS,
    ]
    cfg = compose_config(tmp_path / "train", overrides)
    metrics, objects = train(cfg)
    run = cfg.paths.output_dir  # as ckpt_path, its metrics.json names the best (int8) checkpoint
    (int8,) = Path(run, "checkpoints").glob("*-int8.ckpt")
    structure = torch.load(int8, weights_only=True)["slimlab"]["structure"]
    assert [e["kind"] for e in structure] == ["prune", "qat", "qat"]  # cut, prepared, converted
    assert set(structure[0]["heads"].values()) == {1}, structure[0]["heads"]  # 2 heads -> 1
    # eval.py rebuilds the pruned int8 model from its checkpoint and scores it the same
    eval_cfg = compose_config(tmp_path / "eval", [f"ckpt_path={run}"], config_name="eval")
    eval_metrics, _ = evaluate(eval_cfg)
    assert float(eval_metrics["test/acc"]) == pytest.approx(float(metrics["test/acc"]), abs=1e-6)
    out = tmp_path / "export"
    summary = export(
        export_cfg(tmp_path, f"ckpt_path={run}", f"output_dir={out}", "latency.batch_sizes=[8]")
    )
    # dict batches of token ids reach parity; the int8 graph's dropout is off (it was random)
    assert summary["passed"], summary["artifacts"]
    assert [spec["name"] for spec in summary["inputs"]] == ["input_ids", "attention_mask"]
    for name in ("model.onnx", "model.int8.onnx", "model.pt2"):
        assert summary["artifacts"][name]["parity"]["top1_agreement"] == 1.0, name
        assert (out / name).is_file()


# -- dynamic int8: the transformer path ----------------------------------------------------------
@pytest.mark.slow  # ~20 s: a tiny ViT trained for 5 epochs, then exported
def test_vit_exports_dynamic_int8_with_fp32_convolutions(tmp_path: Path) -> None:
    overrides = [
        "experiment=digits_vit",
        "model.net.dim=32",
        "model.net.depth=1",
        "model.net.heads=2",
        "trainer.max_epochs=5",
        "test=false",
        *NO_BARS,
    ]
    ckpt = trained_ckpt(tmp_path, overrides)
    out = tmp_path / "export"
    summary = export(
        export_cfg(
            tmp_path,
            f"ckpt_path={ckpt}",
            f"output_dir={out}",
            "format=onnx",
            "quantize=int8_dynamic",
            "parity.int8_agreement=0.97",  # int8 kernels differ by CPU: near ties may flip
            "latency.batch_sizes=[64]",
        )
    )
    assert summary["passed"], summary["artifacts"]
    int8, fp32 = summary["artifacts"]["model.int8.onnx"], summary["artifacts"]["model.onnx"]
    assert int8["quantization"]["calibration"].startswith("none")
    assert int8["parity"]["top1_agreement"] >= 0.97
    assert int8["parity"]["max_abs_logit_diff"] < 0.2  # 0.03 measured
    # no QDQ pairs: each linear layer's input is quantized per call, its weights are int8
    assert int8["quantize_linear_nodes"] == 0 and int8["dynamic_quantize_linear_nodes"] > 0
    assert int8["size_bytes"] < fp32["size_bytes"]
    x = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    kernels = ort_kernels(out / "model.int8.onnx", x)
    assert {"DynamicQuantizeMatMul", "MatMulInteger"} & kernels
    assert "Conv" in kernels and "ConvInteger" not in kernels  # the patch embedding stays fp32
