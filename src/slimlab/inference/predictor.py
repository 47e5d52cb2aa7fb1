"""One `predict(raw batch) -> probabilities` over a checkpoint or an exported ONNX file.

`Predictor.from_checkpoint(path)` rebuilds the network the checkpoint holds (pruned, int8 and
all) and reads its data config; `Predictor.from_onnx(path)` runs the file with onnxruntime and
reads `export.json` beside it (written by export.py). Both apply the training-time
preprocessing to raw inputs (`slimlab.inference.data`), so the same raw batch gets the same
answer from either, and both expose the training split's drift reference.

Timeline of a call: `predict(batch)` checks the batch against `input_spec` (InputError, a
ValueError, names what was wrong), preprocesses it, runs the network, and returns the softmax
of the logits as float32 (N, num_classes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from slimlab.inference.data import IDENTITY, describe_data, input_spec, preprocess
from slimlab.inference.runtime import TENSOR_INPUT, Runner, onnx_runner, onnx_session
from slimlab.utils.errors import ConfigError
from slimlab.utils.logging import get_logger

log = get_logger(__name__)

EXPORT_JSON = "export.json"
SUFFIXES = {".ckpt": "from_checkpoint", ".onnx": "from_onnx"}


class InputError(ValueError):
    """A batch that does not match the model's input spec (shape, dtype, values)."""


def file_version(path: Path) -> str:
    """A short content hash of the model file: changes whenever the model does."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, returned as float32."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Predictor:
    """Probabilities from raw inputs, over a checkpoint or an exported ONNX file.

    Attributes: `input_spec` (per input: name, shape without batch, dtype of raw values),
    `info` (name, checkpoint, format, params, size_bytes, version), `reference` (the training
    split's class prior and raw input mean/std, or None), `num_classes`.
    """

    def __init__(
        self,
        runner: Runner,
        input_spec: list[dict[str, Any]],
        preprocessing: Mapping[str, Any],
        num_classes: int,
        info: dict[str, Any],
        reference: dict[str, Any] | None = None,
    ) -> None:
        self._run = runner
        self.input_spec = input_spec
        self.preprocessing = dict(preprocessing)
        self.num_classes = int(num_classes)
        self.info = info
        self.reference = reference

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str | Path, threads: int | None = None) -> Predictor:
        """`from_checkpoint` for a .ckpt, `from_onnx` for a .onnx file (`threads`: its ORT
        intra-op threads; None: onnxruntime's default)."""
        path = Path(path)
        if path.suffix not in SUFFIXES:
            raise ConfigError(
                f"model_path={path} has suffix {path.suffix!r}: give one of {sorted(SUFFIXES)} "
                "(a checkpoint from train.py or an ONNX file from export.py)"
            )
        if SUFFIXES[path.suffix] == "from_onnx":
            return cls.from_onnx(path, threads=threads)
        return getattr(cls, SUFFIXES[path.suffix])(path)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> Predictor:
        """Rebuild the checkpoint's network on `device`; preprocessing from its data config."""
        from slimlab.inference.checkpoint import datamodule_of, open_checkpoint
        from slimlab.inference.runtime import torch_runner
        from slimlab.models.base import count_parameters

        path = Path(path)
        module = open_checkpoint(path)
        net = module.net.to(device).eval()
        num_classes = int(module.hparams.get("num_classes", 0))
        described: dict[str, Any] = {"preprocessing": IDENTITY, "reference": None}
        try:
            described = describe_data(datamodule_of(module), num_classes)
        except (ConfigError, FileNotFoundError, NotImplementedError) as exc:
            log.warning(f"{path}: no preprocessing or drift reference from its data ({exc})")
        run = module.run_config or {}
        info = {
            "name": run.get("name", path.stem),
            "checkpoint": str(path.resolve()),
            "format": "checkpoint",
            "params": count_parameters(net),
            "size_bytes": path.stat().st_size,
            "version": file_version(path),
        }
        return cls(
            torch_runner(net, device),
            input_spec(module.example_input_array, described["preprocessing"]),
            described["preprocessing"],
            num_classes,
            info,
            described.get("reference"),
        )

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int | None = None) -> Predictor:
        """Run an ONNX file from export.py with onnxruntime; reads export.json beside it.

        `threads`: onnxruntime intra-op threads (None: its default, one per core, spinning
        between calls; a service on a few cores wants 1).
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"model_path={path} does not exist: give an ONNX file from export.py"
            )
        manifest_path = path.with_name(EXPORT_JSON)
        if not manifest_path.is_file():
            raise ConfigError(
                f"model_path={path} has no {EXPORT_JSON} beside it: export the checkpoint with "
                "`python export.py ckpt_path=<.ckpt>`, which writes both"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
            preprocessing = manifest["preprocessing"]
            spec = manifest["inputs"]
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"{manifest_path} is not an export.json from export.py ({exc})"
            ) from exc
        artifact = manifest.get("artifacts", {}).get(path.name, {})
        try:
            session = onnx_session(str(path), threads)
        except ConfigError:
            raise
        except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, ...
            raise ConfigError(f"model_path={path} is not a valid ONNX file ({exc})") from exc
        info = {
            "name": manifest.get("name", path.stem),
            "checkpoint": manifest.get("checkpoint"),
            "format": "onnx-int8" if artifact.get("precision") == "int8" else "onnx",
            "params": manifest.get("params"),
            "size_bytes": path.stat().st_size,
            "version": file_version(path),
        }
        return cls(
            onnx_runner(session),
            spec,
            preprocessing,
            manifest["num_classes"],
            info,
            manifest.get("reference"),
        )

    # -- predicting ---------------------------------------------------------------------------
    def _feed(self, batch: Any) -> dict[str, np.ndarray]:
        """Checked, preprocessed network inputs from a raw batch."""
        if isinstance(batch, Mapping):
            given = dict(batch)
        elif len(self.input_spec) == 1:
            given = {self.input_spec[0]["name"]: batch}
        else:
            names = [s["name"] for s in self.input_spec]
            raise InputError(f"this model takes named inputs {names}: give a dict of arrays")
        feed: dict[str, np.ndarray] = {}
        batch_size = None
        for spec in self.input_spec:
            name, shape, dtype = spec["name"], tuple(spec["shape"]), np.dtype(spec["dtype"])
            if name not in given:
                raise InputError(
                    f"input {name!r} is missing: give {[s['name'] for s in self.input_spec]}"
                )
            try:
                array = np.asarray(given[name])
            except (ValueError, TypeError) as exc:
                raise InputError(f"input {name!r} is not an array of numbers ({exc})") from exc
            if array.dtype == object or not (
                np.issubdtype(array.dtype, np.number) or array.dtype == bool
            ):
                raise InputError(f"input {name!r} has dtype {array.dtype}: give numbers ({dtype})")
            if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
                raise InputError(
                    f"input {name!r} has shape {list(array.shape)}: give [batch, "
                    f"{', '.join(map(str, shape))}]"
                )
            if array.shape[0] == 0:
                raise InputError(f"input {name!r} is an empty batch: give at least one sample")
            if batch_size not in (None, array.shape[0]):
                raise InputError(
                    f"inputs have different batch sizes ({batch_size}, {array.shape[0]})"
                )
            batch_size = array.shape[0]
            if np.issubdtype(dtype, np.integer):
                if not np.issubdtype(array.dtype, np.integer):
                    raise InputError(
                        f"input {name!r} has dtype {array.dtype}: give integers ({dtype})"
                    )
                feed[name] = array.astype(dtype)
            else:
                if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                    raise InputError(f"input {name!r} holds NaN or inf: give finite numbers")
                feed[name] = preprocess(array, self.preprocessing)
        if list(feed) == [self.input_spec[0]["name"]] and len(self.input_spec) == 1:
            return {TENSOR_INPUT: feed[self.input_spec[0]["name"]]}
        return feed

    def predict(self, batch: Any) -> np.ndarray:
        """Class probabilities (N, num_classes), float32, for a raw batch with a batch axis."""
        return softmax(self._run(self._feed(batch)))
