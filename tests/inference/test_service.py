"""The HTTP service on the session's digits int8 export, served for real by uvicorn on loopback.

One server for the module (auth on, small limits, a 100-sample drift window), shared by every
test: endpoints, each bad input class, auth, metrics that parse and move, drift that moves
when the inputs shift, and the dashboard and alert queries naming metrics it really exports.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from serving import free_port

pytestmark = pytest.mark.slow  # they share the session's trained and exported digits model

httpx = pytest.importorskip("httpx", reason="the serve extra: pip install -e '.[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra: pip install -e '.[serve]'")
parser = pytest.importorskip("prometheus_client.parser", reason="the serve extra")

from slimlab.inference import Predictor  # noqa: E402
from slimlab.inference.service import ServeSettings, create_app  # noqa: E402

KEY = "test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
SETTINGS = ServeSettings(
    port=0,
    api_key=KEY,
    max_batch=16,
    max_body_bytes=32 * 1024,
    drift_window=100,
    batch_wait_ms=1.0,
)


class ThreadedServer:
    """uvicorn serving `app` on 127.0.0.1 in a thread of this process."""

    def __init__(self, app, port: int) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise AssertionError("the service never answered /ready with 200")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def int8_model(digits_export: Path) -> Path:
    return digits_export / "model.int8.onnx"


@pytest.fixture(scope="module")
def service(int8_model: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(create_app(SETTINGS, int8_model), free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def client(service: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Raw digits images (pixels 0..16), shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    return load_digits().images[-200:].reshape(-1, 1, 8, 8)


def predict(client: httpx.Client, body, headers=AUTH) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/predict", content=content, headers=headers)


def scrape(client: httpx.Client) -> dict[str, float]:
    """/metrics parsed by prometheus_client: {'name{label=value,...}': value}."""
    answer = client.get("/metrics")
    assert answer.status_code == 200
    samples = {}
    for family in parser.text_string_to_metric_families(answer.text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def test_health_ready_and_predictions_match_the_predictor(
    client: httpx.Client, int8_model: Path, images: np.ndarray
) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True

    expected = Predictor.from_onnx(int8_model).predict(images[:5])
    one = predict(client, {"inputs": images[0].tolist()})
    assert one.status_code == 200, one.text
    answer = one.json()
    assert len(answer["predictions"]) == 1
    assert answer["predictions"][0]["class"] == int(expected[0].argmax())
    assert answer["model"]["version"] == Predictor.from_onnx(int8_model).info["version"]
    assert answer["model"]["format"] == "onnx-int8"

    batch = predict(client, {"inputs": images[:5].tolist()}).json()["predictions"]
    assert [p["class"] for p in batch] == expected.argmax(axis=1).tolist()
    probs = np.array([p["probabilities"] for p in batch])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def _image(images: np.ndarray, value: str) -> str:
    text = json.dumps(images[0].tolist())
    return text.replace("0.0", value, 1)


@pytest.mark.parametrize(
    ("make_body", "status", "message"),
    [
        (lambda im: b'{"inputs": [[[0, 1', 400, "not valid JSON"),
        (lambda im: {"inputs": im[0, 0].tolist()}, 422, "has shape [8, 8]: give [1, 8, 8]"),
        (lambda im: {"inputs": [[["x"] * 8] * 8]}, 422, "holds strings"),
        (lambda im: f'{{"inputs": {_image(im, "NaN")}}}'.encode(), 422, "NaN or inf"),
        (lambda im: f'{{"inputs": {_image(im, "Infinity")}}}'.encode(), 422, "NaN or inf"),
        (lambda im: {"inputs": []}, 422, "empty batch"),
        (lambda im: {"inputs": im[:20].tolist()}, 413, "20 samples, over limits.max_batch=16"),
        (lambda im: {"inputs": im[:200].tolist()}, 413, "over limits.max_body_bytes=32768"),
        (lambda im: {"images": im[0].tolist()}, 422, '{"inputs"'),
    ],
    ids=["json", "shape", "dtype", "nan", "inf", "empty", "batch", "body", "schema"],
)
def test_each_bad_input_is_a_4xx_naming_it_and_the_service_keeps_serving(
    client: httpx.Client, images: np.ndarray, make_body, status: int, message: str
) -> None:
    answer = predict(client, make_body(images))
    assert answer.status_code == status
    assert message in answer.json()["error"]
    good = predict(client, {"inputs": images[0].tolist()})
    assert good.status_code == 200, "the service stopped serving after a bad request"


def test_auth(client: httpx.Client, images: np.ndarray) -> None:
    body = {"inputs": images[0].tolist()}
    missing = predict(client, body, headers={})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert predict(client, body, headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    assert predict(client, body, headers={"X-API-Key": KEY}).status_code == 200
    assert predict(client, body, headers=AUTH).status_code == 200
    # probes and (auth.protect_metrics=false) metrics stay open
    for route in ("/health", "/ready", "/metrics"):
        assert client.get(route).status_code == 200, route


def test_protected_metrics_need_the_key(int8_model: Path) -> None:
    settings = ServeSettings(api_key=KEY, protect_metrics=True)
    with ThreadedServer(create_app(settings, int8_model), free_port()) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers=AUTH).status_code == 200
        assert httpx.get(f"{server.url}/ready").status_code == 200  # probes stay open


def test_a_checkpoint_is_served_with_its_drift_reference(
    digits_ckpt: Path, images: np.ndarray
) -> None:
    # the Predictor computes the drift reference from the checkpoint's own training split
    expected = Predictor.from_checkpoint(digits_ckpt).predict(images[:4]).argmax(axis=1)
    with ThreadedServer(create_app(ServeSettings(), digits_ckpt), free_port()) as server:
        answer = httpx.post(f"{server.url}/predict", json={"inputs": images[:4].tolist()})
        assert answer.status_code == 200, answer.text
        assert [p["class"] for p in answer.json()["predictions"]] == expected.tolist()
        assert answer.json()["model"]["format"] == "checkpoint"
        text = httpx.get(f"{server.url}/metrics").text
    gauges = {
        s.name: s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }
    assert gauges["slimlab_drift_window_samples"] == 4
    assert "slimlab_drift_prediction_psi" in gauges and "slimlab_drift_input_shift" in gauges


def test_metrics_parse_and_move_with_traffic(client: httpx.Client, images: np.ndarray) -> None:
    before = scrape(client)
    for i in range(6):
        assert predict(client, {"inputs": images[i : i + 2].tolist()}).status_code == 200
    for _ in range(3):
        assert predict(client, b"{oops").status_code == 400
    after = scrape(client)

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    ok = "slimlab_http_requests_total{method=POST,route=/predict,status=200}"
    bad = "slimlab_http_requests_total{method=POST,route=/predict,status=400}"
    assert moved(ok) == 6 and moved(bad) == 3
    assert moved("slimlab_http_request_duration_seconds_count{route=/predict}") == 9
    assert moved("slimlab_predict_rejected_total{reason=malformed_json}") == 3
    assert moved("slimlab_inference_batch_size_sum{}") == 12  # 6 requests of 2 samples
    assert moved("slimlab_inference_batch_size_count{}") >= 1
    assert moved("slimlab_inference_duration_seconds_count{}") >= 1
    info = [k for k, v in after.items() if k.startswith("slimlab_model_info{") and v == 1]
    assert len(info) == 1 and "format=onnx-int8" in info[0] and "name=digits_tiny" in info[0]
    assert after["slimlab_model_parameters{}"] > 0 and after["slimlab_model_size_bytes{}"] > 0


def test_drift_gauges_move_when_the_inputs_shift(client: httpx.Client, images: np.ndarray) -> None:
    def send(batch: np.ndarray) -> dict[str, float]:
        for i in range(0, len(batch), 10):
            assert predict(client, {"inputs": batch[i : i + 10].tolist()}).status_code == 200
        return scrape(client)

    normal = send(images[:100])  # fills the 100-sample window with real digits
    assert normal["slimlab_drift_window_samples{}"] == 100
    assert normal["slimlab_drift_input_shift{}"] < 0.3
    assert normal["slimlab_drift_prediction_psi{}"] < 0.3

    shifted = send(images[100:200] * 4.0)  # a client scaling pixels 0..64 instead of 0..16
    assert shifted["slimlab_drift_input_shift{}"] > 1.0
    assert shifted["slimlab_drift_prediction_psi{}"] > normal["slimlab_drift_prediction_psi{}"]


def referenced_metrics() -> dict[str, set[str]]:
    """Metric names in every Grafana panel query and alert rule expression."""
    import yaml

    queries = {}
    dashboard = json.loads((ROOT / "monitoring/grafana/dashboards/slimlab.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            queries[f"dashboard {panel['title']!r} {target['refId']}"] = target["expr"]
    alerts = yaml.safe_load((ROOT / "monitoring/alerts.yml").read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            queries[f"alert {rule['alert']}"] = rule["expr"]
    names = {}
    for where, expr in queries.items():
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", expr)  # no selectors, ranges
        found = set(re.findall(r"\b(slimlab_[a-z0-9_]+|up)\b", bare))
        assert found, f"{where}: no metric in {expr!r}"
        names[where] = found
    return names


def test_dashboard_and_alerts_name_metrics_the_service_exports(client: httpx.Client) -> None:
    exported = {key.split("{")[0] for key in scrape(client)}
    prometheus_own = {"up"}
    for where, names in referenced_metrics().items():
        unknown = names - exported - prometheus_own
        assert not unknown, f"{where} names {sorted(unknown)}, which /metrics does not export"


def test_bench_load_generator_against_the_service(service: ThreadedServer) -> None:
    sys.path.insert(0, str(ROOT / "scripts" / "bench"))
    try:
        from bench_serve import load
    finally:
        sys.path.pop(0)
    result = load(service.url, concurrency=4, requests=100, max_seconds=30, headers=AUTH)
    assert result["requests"] == 100 and result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
