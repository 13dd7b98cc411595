"""Prometheus metrics of the stream (`cdp stream`), served on `engine.metrics_port` next to the
API's /metrics: micro-batches and their duration per source, rows per stage, quarantine by
reason, and each promotion step's parts. One registry per process; the HTTP server is
prometheus_client's own."""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

BATCH_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
STEP_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)


class StreamMetrics:
    """What the stream did since it started, for a scraper."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batches = Counter(
            "cdp_stream_batches", "Micro-batches committed", ["source"], registry=r
        )
        self.batch_seconds = Histogram(
            "cdp_stream_batch_seconds",
            "Micro-batch duration (parse, check, bronze, silver, quarantine)",
            ["source"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "cdp_stream_rows",
            "Rows written by the stream per source and table kind (bronze, silver, quarantine)",
            ["source", "table"],
            registry=r,
        )
        self.quarantined = Counter(
            "cdp_stream_quarantined",
            "Lines quarantined per reason",
            ["source", "reason"],
            registry=r,
        )
        self.last_batch = Gauge(
            "cdp_stream_last_batch_timestamp_seconds",
            "When the source's last micro-batch committed (unix time)",
            ["source"],
            registry=r,
        )
        self.steps = Counter("cdp_promotion_steps", "Promotion steps run", registry=r)
        self.step_seconds = Histogram(
            "cdp_promotion_step_seconds",
            "Promotion step duration per part (gate, alerts, identity, gold)",
            ["part"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.last_step = Gauge(
            "cdp_promotion_last_step_timestamp_seconds",
            "When the last promotion step ended (unix time)",
            registry=r,
        )

        self.offsets_behind = Gauge(
            "cdp_stream_kafka_offsets_behind",
            "Messages of the source's topic after the last micro-batch read (the partition "
            "furthest behind, from Spark's Kafka source progress)",
            ["source"],
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """Answer scrapes on http://host:port/metrics from a daemon thread."""
        start_http_server(port, addr=host, registry=self.registry)

    def batch(
        self,
        source: str,
        seconds: float,
        bronze: int,
        silver: int,
        quarantined: Mapping[str, int],
    ) -> None:
        """One committed micro-batch of `source`."""
        self.batches.labels(source).inc()
        self.batch_seconds.labels(source).observe(seconds)
        self.rows.labels(source, "bronze").inc(bronze)
        self.rows.labels(source, "silver").inc(silver)
        self.rows.labels(source, "quarantine").inc(sum(quarantined.values()))
        for reason, n in quarantined.items():
            self.quarantined.labels(source, reason).inc(n)
        self.last_batch.labels(source).set(time.time())

    def kafka_progress(self, source: str, progress: Mapping[str, object] | None) -> None:
        """Record how far the source's topic query is behind the newest offsets."""
        for src in (progress or {}).get("sources", []) or []:  # type: ignore[attr-defined]
            behind = (src.get("metrics") or {}).get("maxOffsetsBehindLatest")
            if behind is not None:
                self.offsets_behind.labels(source).set(float(behind))

    def step(self, parts: Mapping[str, float]) -> None:
        """One promotion step, with the seconds each part took."""
        for part, seconds in parts.items():
            self.step_seconds.labels(part).observe(seconds)
        self.steps.inc()
        self.last_step.set(time.time())
