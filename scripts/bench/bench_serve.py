"""Load test of the HTTP service: throughput and p50/p99 latency, loopback only, bounded.

    python scripts/bench/bench_serve.py --url http://127.0.0.1:8000   # a running service
    python scripts/bench/bench_serve.py [--update-docs]                # docs/serving.md's table

With `--url`, it sends single-image /predict requests (digits test images) at each
`--concurrency` and prints requests/s, p50/p99 latency and errors. Without it, it starts the
services itself (`python serve.py` on free loopback ports): the digits CNN as a torch fp32
checkpoint and as the ORT int8 export, each with dynamic batching on and off, and measures them
in interleaved rounds (medians over rounds), then one run of 10,000 requests at concurrency 8 on
ORT int8 for the zero-error target. Results: logs/bench/serve.json; the table in docs/serving.md
changes only with --update-docs. The model is the newest `digits_cnn` run's export under
logs/train/ (`--run` to pick one): `python train.py experiment=digits_cnn` and
`python export.py ckpt_path=latest name=digits_cnn quantize=int8` make it.

The load generator is a few lines of asyncio over keep-alive HTTP/1.1 connections, one per
concurrent client, with the request bytes prepared once, so that the client takes as little of
the machine's CPU from the server as it can; it never talks to anything but 127.0.0.1/localhost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "serving.md"
OUT = ROOT / "logs" / "bench" / "serve.json"
BEGIN, END = "<!-- bench_serve:begin -->", "<!-- bench_serve:end -->"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def digits_bodies(count: int = 64) -> list[bytes]:
    """/predict bodies of single digits test images (raw pixels 0..16, shape 1x8x8)."""
    from sklearn.datasets import load_digits

    images = load_digits().images[-count:]
    return [json.dumps({"inputs": [img.tolist()]}).encode() for img in images]


def request_bytes(host: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def _client(
    host: str, port: int, requests: list[bytes], budget: list[int], deadline: float, out: dict
) -> None:
    """One keep-alive connection sending requests until the shared budget or time runs out."""
    reader = writer = None
    i = 0
    while budget[0] > 0 and time.perf_counter() < deadline:
        budget[0] -= 1
        if writer is None:
            reader, writer = await asyncio.open_connection(host, port)
        assert reader is not None
        started = time.perf_counter()
        try:
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            match = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(match.group(1)) if match else 0)
            if b"connection: close" in head.lower():
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError):
            status = 0
            writer = None
        out["latency"].append(time.perf_counter() - started)
        if status != 200:
            out["errors"] += 1
        i += 1
    if writer is not None:
        writer.close()


def load(
    url: str,
    concurrency: int,
    requests: int,
    max_seconds: float = 60.0,
    bodies: list[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """Send `requests` /predict requests from `concurrency` clients; latency stats in ms."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host not in LOOPBACK:
        raise SystemExit(f"--url {url}: this load test only targets this machine (127.0.0.1)")
    prepared = [request_bytes(host, port, b, headers or {}) for b in bodies or digits_bodies()]
    out: dict = {"latency": [], "errors": 0}
    budget = [requests]

    async def main() -> float:
        started = time.perf_counter()
        deadline = started + max_seconds
        clients = [
            _client(host, port, prepared[k:] + prepared[:k], budget, deadline, out)
            for k in range(concurrency)
        ]
        await asyncio.gather(*clients)
        return time.perf_counter() - started

    seconds = asyncio.run(main())
    latency = np.asarray(out["latency"]) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latency),
        "errors": out["errors"],
        "seconds": round(seconds, 3),
        "rps": round(len(latency) / seconds, 1),
        "p50_ms": round(float(np.percentile(latency, 50)), 3),
        "p99_ms": round(float(np.percentile(latency, 99)), 3),
    }


# -- the full benchmark: services started here -------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def newest_export(run: str | None) -> tuple[Path, Path]:
    """(best checkpoint, model.int8.onnx) of `run` or the newest digits_cnn run with an export."""
    if run:
        folder = Path(run)
    else:
        exports = sorted(
            (ROOT / "logs" / "train" / "digits_cnn").glob("**/export/model.int8.onnx"),
            key=lambda p: p.stat().st_mtime,
        )
        if not exports:
            raise SystemExit(
                "no digits_cnn export under logs/train/digits_cnn: run `python train.py "
                "experiment=digits_cnn` and `python export.py ckpt_path=latest name=digits_cnn "
                "quantize=int8` first, or give --run <run folder>"
            )
        folder = exports[-1].parent.parent
    onnx = folder / "export" / "model.int8.onnx"
    ckpt = Path(json.loads((folder / "export" / "export.json").read_text())["checkpoint"])
    return ckpt, onnx


def start_service(
    model: str, batching: bool, log: Path, wait_ms: float = 0.0
) -> tuple[subprocess.Popen, str]:
    """`python serve.py` on a free loopback port; returns once /ready answers."""
    port = free_port()
    key = "ckpt_path" if model.endswith(".ckpt") else "model_path"
    command = [
        sys.executable,
        str(ROOT / "serve.py"),
        f"{key}={model}",
        "serve.host=127.0.0.1",
        f"serve.port={port}",
        f"serve.batching.enabled={str(batching).lower()}",
        f"serve.batching.max_wait_ms={wait_ms}",
        "serve.log_level=warning",
        "extras.print_config=false",
        f"paths.log_dir={OUT.parent / 'serve_runs'}",
        "hydra.job_logging.root.level=WARNING",
    ]
    return launch(command, log, port, "/ready")


def launch(command: list[str], log: Path, port: int, probe: str) -> tuple[subprocess.Popen, str]:
    """Start a server process (output to `log`); return once GET `probe` answers 200."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{command[1]} exited {proc.returncode}: {log.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}{probe}", timeout=2) as answer,
        ):
            if answer.status == 200:
                return proc, url
        time.sleep(0.5)
    stop(proc)
    raise SystemExit(f"{command[1]} never got ready: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def table(results: dict) -> str:
    rows = [
        "| backend | batching | concurrency | req/s | p50 ms | p99 ms | errors / requests |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["levels"]:
        rows.append(
            f"| {r['backend']} | {r['batching']} | {r['concurrency']} | "
            f"{r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} / {r['requests']} |"
        )
    z = results["zero_error_run"]
    rows.append(
        f"| {z['backend']} | on | {z['concurrency']} (10,000 requests) | {z['rps']:.0f} | "
        f"{z['p50_ms']:.2f} | {z['p99_ms']:.2f} | {z['errors']} / {z['requests']} |"
    )
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in results["batching_gain_at_32"].items())
    rows.append("")
    rows.append(f"Dynamic batching on / off, throughput at concurrency 32: {ratios}.")
    rows.append(
        f"Load average (1 min) before / after: {results['load_before']:.1f} / "
        f"{results['load_after']:.1f}; {results['rounds']} interleaved rounds, medians; "
        f"{results['when']}."
    )
    return "\n".join(rows)


def update_docs(text: str) -> None:
    page = DOCS.read_text()
    start, end = page.index(BEGIN) + len(BEGIN), page.index(END)
    DOCS.write_text(page[:start] + "\n" + text + "\n" + page[end:])


def full_benchmark(args: argparse.Namespace) -> dict:
    ckpt, onnx = newest_export(args.run)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # (backend, batching: "on" (max_wait 0), "on, wait 1 ms" or "off"), model, wait ms
    setups = [
        (("torch fp32", "on"), str(ckpt), 0.0),
        (("torch fp32", "off"), str(ckpt), 0.0),
        (("ORT int8", "on"), str(onnx), 0.0),
        (("ORT int8", "on, wait 1 ms"), str(onnx), 1.0),
        (("ORT int8", "off"), str(onnx), 0.0),
    ]
    services = {}
    load_before = os.getloadavg()[0]
    try:
        for key, model, wait_ms in setups:
            log = OUT.parent / f"serve_{key[0]}_{key[1]}.log".replace(" ", "_").replace(",", "")
            services[key] = start_service(model, key[1] != "off", log, wait_ms)
            print(f"started {key}: {services[key][1]}")
        samples: dict = {key: {c: [] for c in args.concurrency} for key in services}
        for round_ in range(args.rounds):
            for c in args.concurrency:
                for key, (_, url) in services.items():
                    load(url, c, min(200, args.requests))  # warm the connections and caches
                    result = load(url, c, args.requests, args.max_seconds)
                    samples[key][c].append(result)
                    print(f"round {round_} {key} c={c}: {result}")
        levels = []
        for (backend, batching), per_c in samples.items():
            for c, runs in per_c.items():
                levels.append(
                    {
                        "backend": backend,
                        "batching": batching,
                        "concurrency": c,
                        "rps": statistics.median(r["rps"] for r in runs),
                        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                        "errors": sum(r["errors"] for r in runs),
                        "requests": sum(r["requests"] for r in runs),
                    }
                )
        zero = load(services[("ORT int8", "on")][1], 8, 10_000, 120.0)
        zero["backend"] = "ORT int8"
    finally:
        for proc, _ in services.values():
            stop(proc)
    by = {(r["backend"], r["batching"], r["concurrency"]): r for r in levels}
    gain = {
        b: by[(b, "on", 32)]["rps"] / by[(b, "off", 32)]["rps"]
        for b in ("torch fp32", "ORT int8")
        if (b, "on", 32) in by and (b, "off", 32) in by
    }
    return {
        "levels": levels,
        "zero_error_run": zero,
        "batching_gain_at_32": gain,
        "rounds": args.rounds,
        "requests_per_level": args.requests,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "model": str(onnx),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="load-test this running service (loopback only)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000, help="per level (and round)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="per level")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (full run)")
    parser.add_argument("--run", help="the digits_cnn run folder with export/ (full run)")
    parser.add_argument("--api-key", help="send it as a bearer token (--url)")
    parser.add_argument("--update-docs", action="store_true", help="rewrite docs/serving.md")
    parser.add_argument(
        "--table-only", action="store_true", help="print (and --update-docs) the last results"
    )
    args = parser.parse_args()
    if args.url:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        for c in args.concurrency:
            print(json.dumps(load(args.url, c, args.requests, args.max_seconds, headers=headers)))
        return
    if args.table_only:
        results = json.loads(OUT.read_text())
    else:
        results = full_benchmark(args)
        OUT.write_text(json.dumps(results, indent=2))
    text = table(results)
    print(text)
    print(f"results: {OUT}")
    if args.update_docs:
        update_docs(text)
        print(f"updated {DOCS}")


if __name__ == "__main__":
    main()
