"""The GPU check's report: one row per test (outcome, seconds) from pytest's junit XML, with
the GPU model, the driver and the versions that ran it.

    python scripts/gpu_summary.py env logs/gpu_check/env.json       # record this machine
    python scripts/gpu_summary.py table logs/gpu_check/junit.xml --env logs/gpu_check/env.json
    python scripts/gpu_summary.py table ... --markdown out.md --update-docs   # + docs/gpu.md

scripts/gpu_check.sh runs both. `table` also works on the files fetched from the GPU machine,
so the docs can be updated wherever the repository is.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "gpu.md"
START, END = "<!-- gpu_tests:start -->", "<!-- gpu_tests:end -->"
DISTRIBUTIONS = (
    "torch",
    "lightning",
    "bitsandbytes",
    "deepspeed",
    "torch-pruning",
    "hydra-core",
    "onnxruntime",
)
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed")


@dataclass
class Result:
    """One test case of the junit file."""

    test: str
    outcome: str
    seconds: float
    note: str = ""


def _first_line(text: str | None, width: int = 110) -> str:
    line = next((s.strip() for s in (text or "").splitlines() if s.strip()), "")
    return line if len(line) <= width else line[: width - 3] + "..."


def read_junit(path: Path) -> list[Result]:
    """The test cases of a pytest junit XML file, in the order they ran."""
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = f"{module}::{case.get('name')}" if module else str(case.get("name"))
        outcome, note = "passed", ""
        for tag, kind in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                outcome = "xfailed" if element.get("type") == "pytest.xfail" else kind
                note = _first_line(element.get("message") or element.text)
                break
        results.append(Result(name, outcome, float(case.get("time") or 0.0), note))
    return results


def _nvidia_smi() -> dict[str, Any]:
    if shutil.which("nvidia-smi") is None:
        return {"nvidia_smi": None}
    query = ["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    rows = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True).stdout
    header = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    return {
        "nvidia_smi": [row.strip() for row in rows.splitlines() if row.strip()],
        "driver_cuda": cuda.group(1) if cuda else None,
    }


def collect_env() -> dict[str, Any]:
    """This machine: GPUs, driver, CUDA (driver and torch build), package versions."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {},
    }
    for dist in DISTRIBUTIONS:
        try:
            info["versions"][dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info["versions"][dist] = None
    try:
        import torch

        available = torch.cuda.is_available()
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = available
        info["gpus"] = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if available
            else []
        )
        info["bf16"] = bool(available and torch.cuda.is_bf16_supported())
    except ImportError:
        info["cuda_available"] = False
        info["gpus"] = []
    info.update(_nvidia_smi())
    return info


def describe_env(env: dict[str, Any]) -> list[str]:
    """Markdown lines naming the GPU(s), driver, CUDA and versions."""
    gpus = env.get("gpus") or []
    if gpus:
        names = sorted(set(gpus))
        gpu = ", ".join(f"{gpus.count(n)} x {n}" for n in names)
    else:
        gpu = "none visible to torch (torch.cuda.is_available() is False)"
    smi = env.get("nvidia_smi") or []
    driver = smi[0].split(",")[1].strip() if smi and smi[0].count(",") >= 2 else "n/a"
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v)
    return [
        f"- GPU: {gpu}",
        f"- driver {driver}, driver CUDA {env.get('driver_cuda') or 'n/a'}, "
        f"torch built for CUDA {env.get('torch_cuda') or 'none (CPU build)'}",
        f"- {versions}, Python {env.get('python', '?')}",
        f"- run {env.get('date', '?')} on {env.get('platform', '?')}",
    ]


def totals(results: list[Result]) -> str:
    """'12 passed, 1 failed, ... in 301 s'."""
    counts = [f"{sum(r.outcome == o for r in results)} {o}" for o in OUTCOMES]
    seconds = sum(r.seconds for r in results)
    return ", ".join(c for c in counts if not c.startswith("0 ")) + f" in {seconds:.0f} s"


def render(results: list[Result], env: dict[str, Any] | None) -> str:
    """The report as markdown: environment, one row per test, totals."""
    lines = [*(describe_env(env) if env else []), ""]
    lines += ["| test | outcome | s | note |", "|---|---|---:|---|"]
    for r in results:
        note = r.note.replace("|", "\\|")
        lines.append(f"| {r.test} | {r.outcome} | {r.seconds:.1f} | {note} |")
    lines += ["", totals(results) if results else "no test cases in the junit file"]
    return "\n".join(lines).lstrip("\n")


def write_block(doc: Path, start: str, end: str, text: str) -> None:
    """Replace what lies between the `start` and `end` markers of `doc` with `text` (this
    script runs with the standard library alone on a fresh GPU machine, so it does not use
    slimlab.utils.run_files.replace_doc_block, the benchmarks' writer)."""
    content = doc.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{doc} has no {start} ... {end} block to fill")
    before, rest = content.split(start, 1)
    _, after = rest.split(end, 1)
    doc.write_text(f"{before}{start}\n{text}\n{end}{after}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    env_cmd = commands.add_parser("env", help="write this machine's GPU and versions as JSON")
    env_cmd.add_argument("out", type=Path)
    table = commands.add_parser("table", help="print the test table from a junit XML file")
    table.add_argument("junit", type=Path)
    table.add_argument("--env", type=Path, help="the JSON written by `env`")
    table.add_argument("--markdown", type=Path, help="also write the table to this file")
    table.add_argument("--update-docs", action="store_true", help=f"write it into {DOC.name}")
    table.add_argument("--doc", type=Path, default=DOC, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.command == "env":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(collect_env(), indent=2) + "\n")
        return 0
    if not args.junit.is_file():
        print(f"error: {args.junit} does not exist (did pytest run?)", file=sys.stderr)
        return 2
    env = json.loads(args.env.read_text()) if args.env and args.env.is_file() else None
    text = render(read_junit(args.junit), env)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.update_docs:
        write_block(args.doc, START, END, text)
        print(f"wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
