"""The HTTP inference service: FastAPI on uvicorn over a `Predictor`, watched by Prometheus.

Routes: `POST /predict` (one input or a batch -> class, probabilities, model version),
`GET /health` (the process is up), `GET /ready` (model loaded and one warm-up inference done),
`GET /metrics` (Prometheus text, `slimlab.inference.metrics`).

Timeline of one worker process:

1. `create_app(settings, model_path, predictor)` builds the app; uvicorn starts it;
2. startup: the inference thread and the batcher start, the model is loaded there (unless the
   entry already loaded it) and runs one warm-up batch; only then does uvicorn accept
   connections (a model that fails to load stops the process); /ready answers 200 from then on
   and 503 once shutdown begins;
3. a /predict request is checked (auth, body size, JSON, shape, dtype, values; a 4xx naming the
   problem otherwise, `slimlab.inference.requests`), joins a batch (`batching`), and gets its
   rows back; after each model call the batch-size and inference-time histograms and the drift
   gauges (`drift`) are updated; every request is counted and timed by route and status;
4. SIGTERM or Ctrl-C: uvicorn stops accepting connections, lets the requests in flight finish
   (up to `graceful_timeout_s`), then the batcher and the inference thread stop.

Several workers (`serve.workers`) are several uvicorn processes sharing the port, each with its
own model, batcher and drift window; their metrics merge through PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import signal
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimlab.inference.batching import Batcher
from slimlab.inference.drift import DriftMonitor
from slimlab.inference.metrics import MULTIPROC_ENV, ServiceMetrics
from slimlab.inference.predictor import InputError, Predictor
from slimlab.inference.requests import RequestError, parse_predict
from slimlab.utils.errors import require
from slimlab.utils.logging import get_logger
from slimlab.utils.optional import import_optional

log = get_logger(__name__)

ROUTES = ("/predict", "/health", "/ready", "/metrics")
SETTINGS_ENV = "SLIMLAB_SERVE"  # how the entry hands settings to worker processes
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True)
class ServeSettings:
    """configs/serve.yaml's `serve` group, checked (see that file for each key's meaning)."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    threads: int = 1
    batching: bool = True
    batch_max: int = 32
    batch_wait_ms: float = 0.0
    max_batch: int = 256
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    protect_metrics: bool = False
    drift_window: int = 1000
    graceful_timeout_s: float = 30.0
    log_level: str = "info"
    access_log: bool = False


def _int(cfg: Mapping[str, Any], key: str, low: int, high: int | None = None) -> int:
    value = _get(cfg, key)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    ok = ok and (high is None or value <= high)
    bound = f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"
    require(ok, f"serve.{key}={value!r} is out of range: give {bound}")
    return int(value)


def _bool(cfg: Mapping[str, Any], key: str) -> bool:
    value = _get(cfg, key)
    require(isinstance(value, bool), f"serve.{key}={value!r} is not a boolean: give true or false")
    return bool(value)


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def settings_from_config(cfg: Mapping[str, Any]) -> ServeSettings:
    """Check the `serve` config group (plain mapping); ConfigError names the bad key."""
    host = _get(cfg, "host")
    require(
        isinstance(host, str) and host.strip() != "",
        f"serve.host={host!r} is invalid: give an address, 127.0.0.1 (this machine only) or "
        "0.0.0.0 (every interface)",
    )
    wait = _get(cfg, "batching.max_wait_ms")
    require(
        isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 5000,
        f"serve.batching.max_wait_ms={wait!r} is out of range: give milliseconds in [0, 5000]",
    )
    key = _get(cfg, "auth.api_key")
    require(
        key is None or (isinstance(key, str) and len(key) >= 8),
        "serve.auth.api_key is invalid: give a string of at least 8 characters, or null for no "
        "auth (better: set it through the SLIMLAB_API_KEY environment variable)",
    )
    grace = _get(cfg, "graceful_timeout_s")
    require(
        isinstance(grace, int | float) and not isinstance(grace, bool) and grace >= 0,
        f"serve.graceful_timeout_s={grace!r} is out of range: give seconds >= 0",
    )
    level = _get(cfg, "log_level")
    require(level in LOG_LEVELS, f"serve.log_level={level!r} is invalid: give one of {LOG_LEVELS}")
    return ServeSettings(
        host=host,
        port=_int(cfg, "port", 1, 65535),
        workers=_int(cfg, "workers", 1, 64),
        threads=_int(cfg, "threads", 1, 256),
        batching=_bool(cfg, "batching.enabled"),
        batch_max=_int(cfg, "batching.max_batch", 1, 4096),
        batch_wait_ms=float(wait),
        max_batch=_int(cfg, "limits.max_batch", 1, 1 << 20),
        max_body_bytes=_int(cfg, "limits.max_body_bytes", 64),
        api_key=key,
        protect_metrics=_bool(cfg, "auth.protect_metrics"),
        drift_window=_int(cfg, "drift.window", 10, 1_000_000),
        graceful_timeout_s=float(grace),
        log_level=level,
        access_log=_bool(cfg, "access_log"),
    )


class Service:
    """One worker's model, inference thread, batcher, drift window and metrics."""

    def __init__(
        self, settings: ServeSettings, model_path: str | Path, predictor: Predictor | None = None
    ) -> None:
        self.settings = settings
        self.model_path = Path(model_path)
        self.predictor = predictor
        self.metrics = ServiceMetrics()
        self.state = "loading"  # -> ready -> stopping
        self.drift: DriftMonitor | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.batcher: Batcher | None = None
        self._model: dict[str, Any] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the inference thread and batcher, load the model (unless given), warm it up.

        uvicorn accepts connections only after this returns, so a worker that shares the port
        with others never answers /predict before it is ready; a failure here stops the process.
        """
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="slimlab-inference")
        self.batcher = Batcher(
            self._predict,
            self.executor,
            self.settings.batch_max,
            self.settings.batch_wait_ms / 1000.0,
            on_batch=self._observe,
        )
        self.batcher.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self._load_and_warm)
        self.state = "ready"
        log.info(f"ready: {self.model_path} ({self._model['format']}, {self._model['version']})")

    async def stop(self) -> None:
        """Stop the batcher and the inference thread (after uvicorn drained the requests)."""
        self.state = "stopping"
        if self.batcher is not None:
            await self.batcher.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.metrics.process_exited()

    def _load_and_warm(self) -> None:
        """In the inference thread: load the model (if needed), set gauges, run one batch."""
        import torch

        torch.set_num_threads(self.settings.threads)
        if self.predictor is None:
            self.predictor = Predictor.from_path(self.model_path, threads=self.settings.threads)
        predictor = self.predictor
        info = predictor.info
        self._model = {k: info.get(k) for k in ("name", "version", "format")}
        self.metrics.describe_model(info)
        if predictor.reference:
            self.drift = DriftMonitor(
                predictor.reference, predictor.num_classes, self.settings.drift_window
            )
        else:
            log.warning(
                f"{self.model_path}: no drift reference (export.json or the checkpoint's data "
                "gives none); the drift gauges stay absent"
            )
        warm = {
            s["name"]: np.zeros((1, *s["shape"]), dtype=np.dtype(s["dtype"]))
            for s in predictor.input_spec
        }
        predictor.predict(warm)

    # -- inference ---------------------------------------------------------------------------
    def _predict(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        assert self.predictor is not None
        return self.predictor.predict(rows)

    def _observe(self, rows: dict[str, np.ndarray], probs: np.ndarray, seconds: float) -> None:
        """After a model call: batch size, inference time, drift gauges."""
        self.metrics.batch_size.observe(len(probs))
        self.metrics.inference.observe(seconds)
        if self.drift is None:
            return
        raw = next(iter(rows.values())) if len(rows) == 1 else None
        self.drift.update(probs.argmax(axis=1), raw)
        self.metrics.window.set(self.drift.count)
        value = self.drift.prediction_psi()
        if value is not None:
            self.metrics.psi.set(value)
        value = self.drift.input_shift()
        if value is not None:
            self.metrics.input_shift.set(value)

    async def _infer(self, rows: dict[str, np.ndarray], size: int) -> np.ndarray:
        if self.settings.batching:
            assert self.batcher is not None
            return await self.batcher.submit(rows, size)
        started = time.perf_counter()
        probs = await asyncio.get_running_loop().run_in_executor(
            self.executor, self._predict, rows
        )
        self._observe(rows, probs, time.perf_counter() - started)
        return probs

    # -- routes ------------------------------------------------------------------------------
    def _authorized(self, headers: Mapping[str, str]) -> bool:
        key = self.settings.api_key
        if key is None:
            return True
        given = headers.get("x-api-key")
        bearer = headers.get("authorization", "")
        if given is None and bearer[:7].lower() == "bearer ":
            given = bearer[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), key.encode())

    async def _body(self, request: Any) -> bytes:
        limit = self.settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise RequestError(
                413,
                "body_too_large",
                f"the body has {int(length)} bytes, over limits.max_body_bytes={limit}",
            )
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise RequestError(
                    413, "body_too_large", f"the body is over limits.max_body_bytes={limit}"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(self, request: Any) -> Any:
        """POST /predict: {"inputs": one input or a batch} -> classes and probabilities."""
        responses = import_optional("fastapi.responses", "serve")
        try:
            if not self._authorized(request.headers):
                raise RequestError(
                    401,
                    "unauthorized",
                    "missing or wrong API key: send 'Authorization: Bearer <key>' or "
                    "'X-API-Key: <key>'",
                )
            if self.state != "ready":
                raise RequestError(503, "not_ready", f"the model is not ready ({self.state})")
            assert self.predictor is not None
            body = await self._body(request)
            parsed = parse_predict(body, self.predictor.input_spec, self.settings.max_batch)
            try:
                probs = await self._infer(parsed.rows, parsed.size)
            except InputError as exc:  # the Predictor's own check (parse_predict should catch)
                raise RequestError(422, "input", str(exc)) from exc
        except RequestError as exc:
            self.metrics.rejected.labels(reason=exc.reason).inc()
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return responses.JSONResponse(
                {"error": exc.message}, status_code=exc.status, headers=headers
            )
        rounded = np.round(probs.astype(np.float64), 6)
        answer = {
            "predictions": [
                {"class": int(c), "probabilities": p}
                for c, p in zip(probs.argmax(axis=1).tolist(), rounded.tolist())
            ],
            "model": self._model,
        }
        return responses.Response(
            json.dumps(answer, separators=(",", ":")), media_type="application/json"
        )

    async def health(self, request: Any) -> Any:
        """GET /health: the process is up."""
        responses = import_optional("fastapi.responses", "serve")
        return responses.JSONResponse({"status": "ok", "state": self.state})

    async def ready(self, request: Any) -> Any:
        """GET /ready: 200 once the model is loaded and warmed up; 503 before and when stopping."""
        responses = import_optional("fastapi.responses", "serve")
        if self.state == "ready":
            return responses.JSONResponse({"ready": True, "model": self._model})
        return responses.JSONResponse({"ready": False, "state": self.state}, status_code=503)

    async def metrics_text(self, request: Any) -> Any:
        """GET /metrics: Prometheus text format (merged over worker processes)."""
        responses = import_optional("fastapi.responses", "serve")
        if self.settings.protect_metrics and not self._authorized(request.headers):
            return responses.JSONResponse(
                {"error": "missing or wrong API key: auth.protect_metrics is on"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        payload, content_type = self.metrics.render()
        return responses.Response(payload, media_type=content_type)


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by route, method and status."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in ROUTES else "other"
        status = [500]
        started = time.perf_counter()

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.requests.labels(
                route=route, method=scope["method"], status=str(status[0])
            ).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


def create_app(
    settings: ServeSettings, model_path: str | Path, predictor: Predictor | None = None
) -> Any:
    """The FastAPI app of one worker (`predictor`: already loaded, else loaded at startup)."""
    fastapi = import_optional("fastapi", "serve")
    service = Service(settings, model_path, predictor)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):  # noqa: ANN202
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    # plain Starlette routes (request -> response): no pydantic on the hot path; a user's own
    # typed FastAPI routes can be added to the same app
    app = fastapi.FastAPI(title="SlimLab inference", lifespan=lifespan, openapi_url=None)
    app.add_route("/predict", service.predict, methods=["POST"])
    app.add_route("/health", service.health, methods=["GET"])
    app.add_route("/ready", service.ready, methods=["GET"])
    app.add_route("/metrics", service.metrics_text, methods=["GET"])
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    app.state.service = service
    return app


def app_from_env() -> Any:
    """The app of a worker process started by uvicorn (`serve.workers > 1`)."""
    handed = json.loads(os.environ[SETTINGS_ENV])
    return create_app(ServeSettings(**handed["settings"]), handed["model_path"])


def _keep_running_after_signal() -> None:
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown: return normally instead."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: log.info(f"stopped by signal {signum}"))


def run_service(
    settings: ServeSettings,
    model_path: str | Path,
    predictor: Predictor | None = None,
    metrics_dir: str | Path | None = None,
) -> None:
    """Serve until SIGTERM/Ctrl-C: one process, or `settings.workers` uvicorn workers."""
    uvicorn = import_optional("uvicorn", "serve")
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "server_header": False,
    }
    _keep_running_after_signal()
    if settings.workers == 1:
        app = create_app(settings, model_path, predictor)
        uvicorn.Server(uvicorn.Config(app, **common)).run()
        return
    folder = Path(os.environ.get(MULTIPROC_ENV) or metrics_dir or "prometheus_multiproc")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # values of an earlier run must not add to this one's
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(folder)
    os.environ[SETTINGS_ENV] = json.dumps(
        {"settings": asdict(settings), "model_path": str(model_path)}
    )
    log.info(f"{settings.workers} workers; metrics merged through {MULTIPROC_ENV}={folder}")
    uvicorn.run(
        "slimlab.inference.service:app_from_env",
        factory=True,
        workers=settings.workers,
        # a worker answers uvicorn's pings while it imports torch and loads the model
        timeout_worker_healthcheck=60,
        **common,
    )
