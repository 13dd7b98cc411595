"""Prometheus metrics of one API process: requests and latency per route, snapshot freshness."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from api.snapshot import SnapshotHolder

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def install(app: FastAPI, holder: SnapshotHolder) -> None:
    """Count and time every request by route template and status; expose /metrics."""
    registry = CollectorRegistry()
    requests = Counter(
        "cdp_http_requests_total",
        "Requests by route and status",
        ["route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "cdp_http_request_seconds",
        "Request latency by route",
        ["route"],
        buckets=BUCKETS,
        registry=registry,
    )
    version = Gauge("cdp_snapshot_version", "gold.profiles version served", registry=registry)
    age = Gauge(
        "cdp_snapshot_age_seconds", "Seconds since the snapshot was loaded", registry=registry
    )
    reload_s = Gauge(
        "cdp_snapshot_reload_seconds", "Duration of the last reload", registry=registry
    )
    reloads = Gauge("cdp_snapshot_reloads", "Snapshots loaded by this process", registry=registry)

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        latency.labels(name).observe(time.perf_counter() - started)
        requests.labels(name, str(response.status_code)).inc()
        return response

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (no key needed)")
    def metrics() -> Response:
        current = holder.current
        if current is not None:
            version.set(current.version)
            age.set(time.time() - current.loaded_at)
        reload_s.set(holder.last_reload_s)
        reloads.set(holder.reloads)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
