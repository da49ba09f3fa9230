"""Prometheus metrics of one app (its own registry, so two apps in one process never share counts).

- ``masklab_requests_total{path,status}``: answered requests; ``path`` is a route of the app or
  ``other`` (unknown paths are folded so a scanner cannot grow the label set).
- ``masklab_request_duration_seconds{path}``: latency histogram, arrival to last byte sent.
- ``masklab_queue_depth``: requests waiting for a worker; ``masklab_running``: images being processed.
- ``masklab_uploads``: request bodies being received (read before a request is queued for a worker).
- ``masklab_rejections_total{reason}``: ``busy`` (503: workers and queue full, or too many uploads),
  ``connections`` (503: every connection has a request in progress), ``too_large`` (413),
  ``unsupported``/``invalid`` (415/422), ``slow_upload`` (408: a body stalled or trickled), ``deadline`` (504).
- ``masklab_connections_closed_total{reason}``: connections the server closed: ``header_timeout`` (no
  complete request headers in time), ``shed_idle`` (an idle one closed to make room for a new one).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServeMetrics", "MetricsMiddleware", "CONTENT_TYPE"]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    def __init__(self, *, paths: Iterable[str]) -> None:
        self.paths = frozenset(paths)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("masklab_requests", "Answered HTTP requests", ["path", "status"], registry=self.registry)
        self.latency = Histogram(
            "masklab_request_duration_seconds", "Request latency", ["path"], buckets=_BUCKETS, registry=self.registry
        )
        self.rejections = Counter("masklab_rejections", "Refused requests by reason", ["reason"], registry=self.registry)
        self.queue_depth = Gauge("masklab_queue_depth", "Requests waiting for a worker", registry=self.registry)
        self.running = Gauge("masklab_running", "Images being processed now", registry=self.registry)
        self.uploads = Gauge("masklab_uploads", "Request bodies being received", registry=self.registry)
        self.closed = Counter(
            "masklab_connections_closed", "Connections closed by the server", ["reason"], registry=self.registry
        )

    def path_label(self, path: str) -> str:
        return path if path in self.paths else "other"

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def close_connection(self, reason: str) -> None:
        self.closed.labels(reason=reason).inc()

    def bind_gauges(self, *, queue_depth: Callable[[], float], running: Callable[[], float],
                    uploads: Callable[[], float]) -> None:
        self.queue_depth.set_function(queue_depth)
        self.running.set_function(running)
        self.uploads.set_function(uploads)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware recording status and latency of every HTTP request (outermost, so 413s from the
    body limit count too)."""

    def __init__(self, app, *, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, the server answers 500

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            path = self.metrics.path_label(scope.get("path", ""))
            self.metrics.requests.labels(path=path, status=str(status)).inc()
            self.metrics.latency.labels(path=path).observe(time.perf_counter() - start)
