"""Prometheus metrics of one API process (requests and latency per route, snapshot freshness),
and its access log: one JSON line per request on stderr with a request id."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.snapshot import SnapshotHolder
from pipelines.activation.events import EventStore
from pipelines.ops.status import SlaResult

LOOKUP_ROUTE = "/v1/profiles/{id_type}/{id_value}"

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")  # a caller's X-Request-ID we pass on
ACCESS = logging.getLogger("cdp.access")


class Measure:
    """Pure ASGI middleware (no per-request Request/Response objects, unlike @app.middleware):
    counts and times every request by route template and status, answers with its request id
    (the caller's `X-Request-ID` when it is a plain token, else a new one) and, with `log`,
    writes an access-log line. The line names the route template, never the path or query:
    identifiers in them are personal data."""

    def __init__(self, app: ASGIApp, requests: Counter, latency: Histogram, log: bool) -> None:
        self.app = app
        self.requests = requests
        self.latency = latency
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex.encode()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (b"x-request-id", request_id)]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            seconds = time.perf_counter() - started
            self.latency.labels(name).observe(seconds)
            self.requests.labels(name, str(status)).inc()
            if self.log:
                ACCESS.info(
                    json.dumps(
                        {
                            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                            "request_id": request_id.decode(),
                            "method": scope["method"],
                            "route": name,
                            "status": status,
                            "ms": round(seconds * 1000, 3),
                        }
                    )
                )


class ApiMetrics:
    """The metrics of one API process in their own registry: requests, snapshot freshness,
    SLAs and the delivery queues (read from the ops store, so every worker answers the same)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "cdp_http_requests_total",
            "Requests by route and status",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "cdp_http_request_seconds",
            "Request latency by route",
            ["route"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.version = Gauge(
            "cdp_snapshot_version", "gold.profiles version served", registry=registry
        )
        self.age = Gauge(
            "cdp_snapshot_age_seconds", "Seconds since the snapshot was loaded", registry=registry
        )
        self.reload_s = Gauge(
            "cdp_snapshot_reload_seconds",
            "Duration of the last update (changes applied, or a start from a base)",
            registry=registry,
        )
        self.reloads = Gauge(
            "cdp_snapshot_reloads", "Gold versions taken by this process", registry=registry
        )
        self.full_loads = Gauge(
            "cdp_snapshot_full_loads",
            "Times this process started from a serving base (start, rewrite of gold)",
            registry=registry,
        )
        self.changed_rows = Gauge(
            "cdp_snapshot_changed_rows",
            "Profile rows applied since the base (a new base folds them in)",
            registry=registry,
        )
        self.sla_measured = Gauge(
            "cdp_sla_measured",
            "Last measured value of an SLA",
            ["sla", "subject"],
            registry=registry,
        )
        self.sla_ok = Gauge(
            "cdp_sla_ok", "1 when the SLA holds", ["sla", "subject"], registry=registry
        )
        self.backlog = Gauge(
            "cdp_event_queue_messages",
            "Messages per delivery queue and status",
            ["queue", "status"],
            registry=registry,
        )
        self.oldest = Gauge(
            "cdp_event_queue_oldest_pending_seconds",
            "Age of the oldest undelivered change per queue (the delivery lag right now)",
            ["queue"],
            registry=registry,
        )
        self.lag = Gauge(
            "cdp_event_delivery_lag_seconds",
            "From a change to its acknowledged delivery, over the last deliveries",
            ["quantile"],
            registry=registry,
        )

    def sla_gauges(self, results: list[SlaResult]) -> None:
        for r in results:
            if r.measured is not None:
                self.sla_measured.labels(r.sla, r.subject).set(r.measured)
            self.sla_ok.labels(r.sla, r.subject).set(1 if r.ok else 0)

    def lookup_p99_ms(self) -> float | None:
        """Upper bound of the bucket holding the 99th percentile of lookups (None: no lookups)."""
        counts: dict[float, float] = {}
        for metric in self.latency.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket") and sample.labels.get("route") == LOOKUP_ROUTE:
                    counts[float(sample.labels["le"])] = sample.value
        total = counts.get(float("inf"), 0)
        if not total:
            return None
        bound = next(le for le in sorted(counts) if counts[le] >= 0.99 * total)
        return None if bound == float("inf") else bound * 1000

    def snapshot(self, holder: SnapshotHolder) -> None:
        current = holder.current
        if current is not None:
            self.version.set(current.version)
            self.age.set(time.time() - current.loaded_at)
            self.changed_rows.set(current.changed_rows)
        self.reload_s.set(holder.last_reload_s)
        self.reloads.set(holder.reloads)
        self.full_loads.set(holder.full_loads)

    def queues(self, events: EventStore) -> None:
        now = datetime.now(UTC)
        for queue, counts in events.queue_stats().items():
            for state in ("pending", "delivered", "dead"):
                self.backlog.labels(queue, state).set(counts[state])
            since = counts.get("oldest_pending_at")
            self.oldest.labels(queue).set((now - since).total_seconds() if since else 0)
        for q, seconds in events.delivery_lag((0.5, 0.99)).items():
            self.lag.labels(str(q)).set(seconds)


def install(app: FastAPI, holder: SnapshotHolder, events: EventStore) -> None:
    """Count and time every request by route template and status; expose /metrics (with the
    delivery queues' state)."""
    m = ApiMetrics()
    app.state.sla_gauges = m.sla_gauges
    app.state.lookup_p99_ms = m.lookup_p99_ms
    log = app.state.settings.api.access_log
    if log and not ACCESS.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        ACCESS.addHandler(handler)
        ACCESS.setLevel(logging.INFO)
        ACCESS.propagate = False
    app.add_middleware(Measure, requests=m.requests, latency=m.latency, log=log)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (no key needed)")
    def metrics() -> Response:
        m.snapshot(holder)
        m.queues(events)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
