"""Files a run leaves behind, written so a failure never leaves a half-written file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def to_jsonable(value: Any) -> Any:
    """Tensors and numpy scalars to Python numbers, NaN/inf to None, recursively."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def bench_results_path(name: str) -> Path:
    """Where benchmark `name` keeps its results: `logs/bench/<name>.json` (git-ignored), under
    SLIMLAB_ROOT when set, else under the working directory, like every run folder."""
    return Path(os.environ.get("SLIMLAB_ROOT", ".")) / "logs" / "bench" / f"{name}.json"


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> Path:
    """Write `data` as JSON to `path` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_jsonable(data), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def replace_doc_block(doc: str | Path, start: str, end: str, text: str) -> None:
    """Put `text` between the `start` and `end` marker lines of a Markdown file (a benchmark's
    `--update-docs`); a file without both markers raises SystemExit naming them."""
    doc = Path(doc)
    content = doc.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{doc} has no {start} ... {end} block to fill")
    before, rest = content.split(start, 1)
    _, after = rest.split(end, 1)
    doc.write_text(f"{before}{start}\n{text}\n{end}{after}")


def save_bench_results(
    out: str | Path, results: dict[str, Any], doc_block: tuple[str | Path, str, str] | None = None
) -> list[Path]:
    """Write a benchmark's `results` as JSON to `out`; with `doc_block` (a Markdown page, its
    start and end markers) also put `results["table"]` into that block. The files written."""
    written = [write_json_atomic(out, results)]
    if doc_block is not None:
        doc, start, end = doc_block
        replace_doc_block(doc, start, end, results["table"])
        written.append(Path(doc))
    return written
