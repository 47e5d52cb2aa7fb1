"""The service's Prometheus metrics, right in single- and multi-process mode.

Names follow Prometheus' conventions: the `slimlab_` prefix, base units (seconds, bytes),
`_total` on counters. With several worker processes (`serve.workers > 1`) the serve entry sets
`PROMETHEUS_MULTIPROC_DIR` before any worker imports prometheus_client; each process then writes
its values to files there and `/metrics` merges them (prometheus_client's MultiProcessCollector):
counters and histograms add up across workers, gauges say how they combine (`livemax`: the
worst live worker, for drift; `livemin` for the window's fill). Without that variable a process
keeps its metrics in memory, in a registry of its own (so two services in one process, as in
tests, do not collide).

| metric | type | labels |
| --- | --- | --- |
| slimlab_http_requests_total | counter | route, method, status |
| slimlab_http_request_duration_seconds | histogram | route |
| slimlab_predict_rejected_total | counter | reason (malformed_json, shape, dtype, ...) |
| slimlab_inference_batch_size | histogram (samples per model call) | |
| slimlab_inference_duration_seconds | histogram (one model call) | |
| slimlab_model_info | gauge, 1 | name, checkpoint, format, version |
| slimlab_model_parameters, slimlab_model_size_bytes | gauge | |
| slimlab_drift_prediction_psi, slimlab_drift_input_shift | gauge | |
| slimlab_drift_window_samples | gauge | |
"""

from __future__ import annotations

import os
from typing import Any

from slimlab.utils.optional import import_optional

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess_mode() -> bool:
    """Whether this process writes its metrics to PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get(MULTIPROC_ENV))


class ServiceMetrics:
    """Every metric the service exports, registered in a registry of its own."""

    def __init__(self) -> None:
        prom = import_optional("prometheus_client", "serve")
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prom.Counter(
            "slimlab_http_requests",
            "HTTP requests answered, by route, method and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = prom.Histogram(
            "slimlab_http_request_duration_seconds",
            "Time from receiving a request to sending its last byte",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = prom.Counter(
            "slimlab_predict_rejected",
            "/predict requests refused with a 4xx, by reason",
            ["reason"],
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "slimlab_inference_batch_size",
            "Samples per model call (dynamic batching joins concurrent requests)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference = prom.Histogram(
            "slimlab_inference_duration_seconds",
            "Time of one model call (preprocessing and the network)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.model_info = prom.Gauge(
            "slimlab_model_info",
            "The served model (value 1): name, checkpoint, export format, content version",
            ["name", "checkpoint", "format", "version"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_parameters = prom.Gauge(
            "slimlab_model_parameters",
            "Parameters of the served model",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.model_size = prom.Gauge(
            "slimlab_model_size_bytes",
            "Size of the served model file",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.psi = prom.Gauge(
            "slimlab_drift_prediction_psi",
            "PSI of the predicted-class mix in the window vs the training class prior "
            "(> 0.2: large shift)",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.input_shift = prom.Gauge(
            "slimlab_drift_input_shift",
            "Largest per-channel shift of live inputs from the training mean/std, in "
            "standard deviations (mean) or |log ratio| (spread)",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.window = prom.Gauge(
            "slimlab_drift_window_samples",
            "Samples in the drift window (the least over worker processes)",
            multiprocess_mode="livemin",
            registry=r,
        )

    def describe_model(self, info: dict[str, Any]) -> None:
        """Set the model info gauges from `Predictor.info`."""
        self.model_info.labels(
            name=str(info.get("name")),
            checkpoint=str(info.get("checkpoint")),
            format=str(info.get("format")),
            version=str(info.get("version")),
        ).set(1)
        if info.get("params") is not None:
            self.model_parameters.set(float(info["params"]))
        if info.get("size_bytes") is not None:
            self.model_size.set(float(info["size_bytes"]))

    def render(self) -> tuple[bytes, str]:
        """The exposition text of every metric (merged over workers) and its content type."""
        prom = self._prom
        if multiprocess_mode():
            from prometheus_client import multiprocess

            registry = prom.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST

    def process_exited(self) -> None:
        """Drop this process's live gauges from the shared folder (multi-process mode)."""
        if multiprocess_mode():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())
