"""Study behind docs/serving.md's choice of serving library: LitServe 0.2.19 vs SlimLab's service.

    pip install litserve==0.2.19          # not a SlimLab dependency: only this study uses it
    python scripts/bench/study_serving_library.py --run <digits_cnn run folder with export/>

Both serve the same model the same way: the digits CNN's ORT int8 export through
`slimlab.inference.Predictor` (one onnxruntime thread), dynamic batching up to 32 samples with
no added wait, one HTTP process and one inference worker. LitServe runs as documented
(`LitAPI` with decode_request / batch / predict / unbatch / encode_response, `LitServer(...)
.run()`); SlimLab's is `python serve.py`. bench_serve.py's load generator measures both in
interleaved rounds on loopback (single-image requests, medians), and the CPU time that each
server's whole process tree spends per request (less sensitive than throughput to other jobs
on a shared machine); LitServe runs twice, with its
default multiprocessing queues and with `fast_queue=True` (ZeroMQ), which its docs recommend
above 100 requests/s. Results:
logs/bench/serving_library.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import litserve as ls
import numpy as np
from bench_serve import OUT, free_port, launch, load, newest_export, start_service, stop

from slimlab.inference import Predictor

RESULTS = OUT.parent / "serving_library.json"


class DigitsAPI(ls.LitAPI):
    """The digits int8 Predictor as a LitServe API (batching: a list of (1, 8, 8) arrays)."""

    def __init__(self, model: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model

    def setup(self, device):
        self.predictor = Predictor.from_onnx(self.model, threads=1)

    def decode_request(self, request):
        return np.asarray(request["inputs"], dtype=np.float32).reshape(1, 8, 8)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.predictor.predict(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probs):
        return {"class": int(probs.argmax()), "probabilities": probs.round(6).tolist()}


def litserve_server(model: str, port: int, fast_queue: bool) -> None:
    """Run LitServe over the Predictor (in this process, until terminated)."""
    api = DigitsAPI(model, max_batch_size=32, batch_timeout=0.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=fast_queue)
    server.run(
        host="127.0.0.1",
        port=port,
        num_api_servers=1,
        generate_client_file=False,
        log_level="warning",
    )


def start_litserve(model: str, log: Path, fast_queue: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, __file__, "--litserve-server", model, "--port", str(port)]
    return launch(command + (["--fast-queue"] if fast_queue else []), log, port, "/health")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process `root` and all its descendants (Linux /proc)."""
    parents, times = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            times[pid] = (int(fields[11]) + int(fields[12])) / tick
    tree, grew = {root}, True
    while grew:
        children = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(times.get(p, 0.0) for p in tree)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="the digits_cnn run folder with export/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--litserve-server", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fast-queue", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.litserve_server:
        litserve_server(args.litserve_server, args.port, args.fast_queue)
        return
    _, onnx = newest_export(args.run)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    servers = {}
    try:
        for fast in (False, True):
            name = "LitServe 0.2.19" + (" (fast_queue, ZeroMQ)" if fast else "")
            log = OUT.parent / f"litserve_{fast}.log"
            servers[name] = start_litserve(str(onnx), log, fast)
        servers["SlimLab (FastAPI + uvicorn)"] = start_service(
            str(onnx), True, OUT.parent / "slimlab_vs_litserve.log"
        )
        samples = {name: {c: [] for c in (1, 8, 32)} for name in servers}
        for _ in range(args.rounds):
            for c in (1, 8, 32):
                for name, (proc, url) in servers.items():
                    load(url, c, 200)
                    before = tree_cpu_seconds(proc.pid)
                    result = load(url, c, args.requests)
                    cpu = tree_cpu_seconds(proc.pid) - before
                    result["server_cpu_ms"] = 1000 * cpu / result["requests"]
                    samples[name][c].append(result)
                    print(name, c, result, flush=True)
    finally:
        for proc, _ in servers.values():
            stop(proc)
    rows = []
    for name, per_c in samples.items():
        for c, runs in per_c.items():
            rows.append(
                {
                    "server": name,
                    "concurrency": c,
                    "rps": statistics.median(r["rps"] for r in runs),
                    "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in runs),
                    "server_cpu_ms_per_request": statistics.median(
                        r["server_cpu_ms"] for r in runs
                    ),
                    "errors": sum(r["errors"] for r in runs),
                }
            )
            print(json.dumps(rows[-1]))
    RESULTS.write_text(
        json.dumps(
            {"rows": rows, "when": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()}
        )
    )
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
