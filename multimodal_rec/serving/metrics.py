"""Metrics, logging and last-resort errors of the HTTP service: one ASGI middleware, one Prometheus registry per app.

With several worker processes (``mmrec serve --workers N``) ``run_server`` points prometheus-client's multiprocess
mode at a fresh directory (``PROMETHEUS_MULTIPROC_DIR``): every worker writes its values there and ``/metrics``,
whichever worker answers, reports them all combined.
"""

# No ``from __future__ import annotations``: as in http.py, the /metrics endpoint's annotations stay eager.

import json
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from multimodal_rec.serving.recommender import Recommender

LOG = logging.getLogger("multimodal_rec.serving.http")  # the service's one log stream
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's multiprocess mode: workers write their values here

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class Observe:
    """Counts requests by endpoint and status, times them, logs one line each, and turns a crash into a JSON 500.

    The endpoint label is the route template (``/videos/{video_id}``), never the raw path: bounded label
    cardinality, and no video id a user looked at in the logs.
    """

    def __init__(self, app: ASGIApp, router: Any, requests: Any, latency: Any) -> None:
        from starlette.routing import Match

        self.app, self.router, self.requests, self.latency = app, router, requests, latency
        self.no_match = Match.NONE

    def _endpoint(self, scope: Scope) -> str:
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match != self.no_match:
                return str(getattr(route, "path", "other"))
        return "other"

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint, t0, status = self._endpoint(scope), time.perf_counter(), 500
        started = False

        async def send_observed(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception as e:
            # Type and frames only: an exception message could quote request data.
            frames = "".join(traceback.format_tb(e.__traceback__))
            LOG.error("unhandled %s on %s %s\n%s", type(e).__name__, scope.get("method"), endpoint, frames)
            if started:
                raise
            status, body = 500, json.dumps({"error": "internal server error"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            dt = time.perf_counter() - t0
            self.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.latency.labels(endpoint=endpoint).observe(dt)
            LOG.info("%s %s %d %.1f ms", scope.get("method"), endpoint, status, dt * 1e3)


def observe(app: "FastAPI", rec: "Recommender") -> Any:
    """Request counts, latency and catalog size in the app's own Prometheus registry (returned, also in
    ``app.state.registry``), collected by the :class:`Observe` middleware."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry(auto_describe=True)
    requests = Counter(
        "mmrec_http_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=registry
    )
    latency = Histogram(
        "mmrec_http_request_duration_seconds", "request latency by endpoint", ["endpoint"], registry=registry
    )
    videos = Gauge("mmrec_catalog_videos", "videos in the served catalog", registry=registry, multiprocess_mode="max")
    videos.set(len(rec))
    app.state.registry = registry
    app.add_middleware(Observe, router=app.router, requests=requests, latency=latency)
    return registry


def add_metrics_route(app: "FastAPI", registry: Any) -> None:
    """GET /metrics: the registry in Prometheus text format."""
    from fastapi import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """Prometheus text format: request counts, latency histograms, catalog size (of every worker process)."""
        return Response(generate_latest(exposed(registry)), media_type=CONTENT_TYPE_LATEST)


def use_multiprocess_dir() -> None:
    """Metrics created from now on write to ``$PROMETHEUS_MULTIPROC_DIR`` (set it first). prometheus-client picks
    its value class when it is imported, which may have happened before the directory was chosen (``run_server``
    checks its dependencies by importing them); the forked workers create their metrics after this call."""
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def exposed(registry: Any) -> Any:
    """The registry to expose: ours, or with several workers (``PROMETHEUS_MULTIPROC_DIR`` set by ``run_server``)
    every worker's values combined from that directory (prometheus-client's multiprocess mode)."""
    if not os.environ.get(METRICS_ENV):
        return registry
    from prometheus_client import CollectorRegistry, multiprocess

    combined = CollectorRegistry()
    multiprocess.MultiProcessCollector(combined)
    return combined
