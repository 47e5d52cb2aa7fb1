"""The serve entry: settings checked before anything heavy, and a real `python serve.py` process
that finishes the requests in flight when it gets SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from serving import start_serve, stop_process, wait_ready
from slimlab.serve import check_settings, masked, resolve_model
from slimlab.utils.errors import ConfigError


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "nothing to serve: give one of ckpt_path="),
        (["ckpt_path=a.ckpt", "model_path=b.onnx"], "both ckpt_path and model_path are set"),
        (["serve.port=0"], "serve.port=0 is out of range: give an integer in 1..65535"),
        (["serve.workers=0"], "serve.workers=0 is out of range"),
        (["serve.batching.max_batch=0"], "serve.batching.max_batch=0 is out of range"),
        (["serve.batching.max_wait_ms=-1"], "serve.batching.max_wait_ms=-1 is out of range"),
        (["serve.batching.enabled=maybe"], "serve.batching.enabled='maybe' is not a boolean"),
        (["serve.limits.max_body_bytes=10"], "serve.limits.max_body_bytes=10 is out of range"),
        (["serve.auth.api_key=short"], "serve.auth.api_key is invalid: give a string of at least"),
        (["serve.drift.window=1"], "serve.drift.window=1 is out of range"),
        (["serve.log_level=loud"], "serve.log_level='loud' is invalid"),
    ],
)
def test_bad_settings_name_the_key(compose_cfg, overrides: list[str], message: str) -> None:
    if not any(o.startswith(("ckpt_path", "model_path")) for o in overrides) and overrides:
        overrides = [*overrides, "model_path=model.onnx"]
    with pytest.raises(ConfigError) as error:
        check_settings(compose_cfg(overrides, config_name="serve"))
    assert message in str(error.value)
    assert "short" not in str(error.value)  # an API key is never echoed


def test_defaults_and_the_api_key_from_the_environment(compose_cfg, monkeypatch) -> None:
    monkeypatch.setenv("SLIMLAB_API_KEY", "from-the-environment")
    cfg = compose_cfg(["model_path=model.onnx"], config_name="serve")
    settings = check_settings(cfg)
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.batching and settings.api_key == "from-the-environment"
    assert masked(cfg).serve.auth.api_key == "***"  # what the config print shows


def test_missing_models_are_named(compose_cfg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model_path=.*nope.onnx does not exist"):
        resolve_model(compose_cfg([f"model_path={tmp_path / 'nope.onnx'}"], config_name="serve"))
    with pytest.raises(ConfigError, match="ckpt_path=latest found no last.ckpt"):
        resolve_model(compose_cfg(["ckpt_path=latest", "name=nothing"], config_name="serve"))


@pytest.mark.slow
def test_cli_bad_model_exits_2_with_the_message_last(tmp_path: Path) -> None:
    proc = run_cli("serve.py", [f"model_path={tmp_path / 'nope.onnx'}"], tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()  # Hydra's "Error executing job ..." then ours
    assert len(lines) <= 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1] == (
        f"Error: model_path={tmp_path / 'nope.onnx'} does not exist: give an ONNX file from "
        "export.py (<run>/export/model.int8.onnx) or a .ckpt"
    )


@pytest.mark.slow
def test_sigterm_lets_requests_in_flight_finish(digits_export: Path, tmp_path: Path) -> None:
    # a lone request waits up to 3 s for others to join its batch: it is in flight that long
    proc, url, log = start_serve(
        digits_export / "model.int8.onnx", tmp_path, "serve.batching.max_wait_ms=3000"
    )
    answer: dict = {}

    def in_flight() -> None:
        body = json.dumps({"inputs": [[[0.0] * 8] * 8]}).encode()
        request = urllib.request.Request(f"{url}/predict", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            answer["status"], answer["body"] = response.status, json.loads(response.read())
        answer["at"] = time.monotonic()

    try:
        wait_ready(f"{url}/ready", proc, log)
        client = threading.Thread(target=in_flight)
        client.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        time.sleep(0.5)
        with pytest.raises(OSError):  # no new connections once shutdown began
            urllib.request.urlopen(f"{url}/health", timeout=2)
        client.join(timeout=30)
        assert proc.wait(timeout=30) == 0, log.read_text()
        assert answer.get("status") == 200, log.read_text()
        assert len(answer["body"]["predictions"]) == 1
        assert answer["at"] > stopped_at + 1.0  # it finished well after SIGTERM
        assert "Finished server process" in log.read_text()
    finally:
        stop_process(proc)


def test_every_serve_setting_has_a_comment() -> None:
    """configs/serve.yaml: each key under `serve:` says its meaning and range (inline or above)."""
    lines = (ROOT / "configs" / "serve.yaml").read_text().splitlines()
    start = lines.index("serve:")
    bare = [
        line.strip()
        for before, line in zip(lines[start:], lines[start + 1 :])
        if ":" in line
        and not line.strip().endswith(":")  # a group such as `batching:`
        and "#" not in line
        and not before.strip().startswith("#")
    ]
    assert not bare, f"serve.yaml keys without a comment: {bare}"
