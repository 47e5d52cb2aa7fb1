"""Helpers for tests that run `python serve.py` (or Prometheus) as real processes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import ROOT


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    """Wait until GET `url` answers 200 (the process must stay alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} never answered 200: {log.read_text()[-4000:]}")


def start_serve(
    model: Path, tmp_path: Path, *overrides: str
) -> tuple[subprocess.Popen, str, Path]:
    """`python serve.py model_path=<model>` on a free loopback port, its log under tmp_path."""
    port = free_port()
    log = tmp_path / f"serve_{port}.log"
    command = [
        sys.executable,
        str(ROOT / "serve.py"),
        f"model_path={model}",
        "serve.host=127.0.0.1",
        f"serve.port={port}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "extras.print_config=false",
        *overrides,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("SLIMLAB_API_KEY", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}", log


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
