"""Which stage is behind: for each hop of the flow (landing or topic -> bronze, bronze ->
silver, silver -> gold, gold -> a serving process) what is waiting there and how long the
oldest of it has waited. The stage holding the oldest waiting item is the one behind: every
stage after it can only be as fresh as it. Read from the lake, the stream's checkpoints and
(for the Kafka source) the broker, without a JVM, so the API and the stream's metrics use it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from pipelines.config import Settings
from pipelines.lakehouse.catalog import (
    EVIDENCE,
    PROFILES,
    bronze_table,
    ingest_checkpoint,
    refined_from,
    silver_table,
)
from pipelines.lakehouse.reader import LakeReader
from pipelines.profile.state import app_id, silver_ranges

SERVING = "gold -> serving"


@dataclass(frozen=True)
class Hop:
    """What waits at one hop for one source (or table): `waiting` items (files, messages,
    rows, versions) the next stage has not taken yet; `oldest_s` how long the oldest has
    waited (0 when nothing waits, None when its age is unknown)."""

    hop: str
    subject: str
    waiting: int
    unit: str
    oldest_s: float | None
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _seen_files(checkpoint: Path) -> set[str]:
    """Landing files the file source has taken (its metadata log: one JSON line per file, the
    batches since the last `.compact` file plus that file)."""
    log = checkpoint / "sources" / "0"
    seen: set[str] = set()
    if not log.is_dir():
        return seen
    for entry in log.iterdir():
        if entry.name.startswith("."):
            continue
        for line in entry.read_text().splitlines()[1:]:  # the first line is the log version
            if line.strip():
                seen.add(json.loads(line)["path"])
    return seen


def _landing_hop(settings: Settings, source: str, now: datetime) -> Hop:
    folder = settings.paths.landing_root / source
    files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
    seen = _seen_files(ingest_checkpoint(settings, source))
    waiting = [f for f in files if f.resolve().as_uri() not in seen]
    oldest = min((f.stat().st_mtime for f in waiting), default=None)
    return Hop(
        "landing -> bronze",
        source,
        len(waiting),
        "files",
        0.0 if oldest is None else round(now.timestamp() - oldest, 1),
        f"{len(files) - len(waiting)} of {len(files)} landing files ingested",
    )


def _read_offsets(checkpoint: Path) -> dict[str, dict[str, int]]:
    """The Kafka offsets (exclusive ends) of the stream's last committed micro-batch."""
    commits = checkpoint / "commits"
    done = [int(p.name) for p in commits.glob("[0-9]*")] if commits.is_dir() else []
    if not done:
        return {}
    lines = (checkpoint / "offsets" / str(max(done))).read_text().splitlines()
    return dict(json.loads(lines[-1]))  # version, batch metadata, then the source's offsets


def _topic_hop(settings: Settings, source: str, now: datetime, timeout_s: float = 5.0) -> Hop:
    """Messages of the source's topic after the stream's committed offsets, and the age of the
    first of them (read from the broker)."""
    from confluent_kafka import Consumer, TopicPartition

    from pipelines.lakehouse.kafka import client_config

    cfg = settings.source.kafka
    topic = cfg.topic(source)
    read = _read_offsets(ingest_checkpoint(settings, source, "kafka")).get(topic, {})
    consumer = Consumer(
        client_config(cfg)
        | {"group.id": "cdp-health", "enable.auto.commit": False, "enable.partition.eof": True}
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        behind, first = 0, []
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            start = max(int(read.get(str(p), low)), low)
            if high > start:
                behind += high - start
                first.append(TopicPartition(topic, p, start))
        oldest: float | None = 0.0
        if first:
            consumer.assign(first)
            stamps = []
            for _ in first:
                msg = consumer.poll(timeout_s)
                if msg is not None and msg.error() is None:
                    stamps.append(msg.timestamp()[1] / 1000)
            oldest = round(now.timestamp() - min(stamps), 1) if stamps else None
    finally:
        consumer.close()
    return Hop("topic -> bronze", source, behind, "messages", oldest, f"topic {topic}")


def _versions_hop(
    lake: LakeReader,
    hop: str,
    subject: str,
    table: str,
    done: int | None,
    now: datetime,
    target: int | None = None,
) -> Hop:
    """Rows of `table` committed after version `done` (up to `target`, default its newest),
    and how long ago the first of them was ingested."""
    target = lake.version(table) if target is None else target
    if target is None or (done is not None and done >= target):
        return Hop(hop, subject, 0, "rows", 0.0, f"{table} version {target}: caught up")
    column = "ingest_ts" if table.startswith("bronze.") else "_ingest_ts"
    if done is None:  # everything so far: the table as it is (no change feed needed)
        rows = lake.read_arrow(table, [column], version=target).column(column)
    else:
        rows = lake.appended(table, done, target, [column]).column(column)
    oldest = pc.min(rows).as_py()
    age = round((now - oldest).total_seconds(), 1) if isinstance(oldest, datetime) else None
    after = "the start" if done is None else f"version {done}"
    return Hop(hop, subject, len(rows), "rows", age, f"{table} versions after {after}")


def _refined(lake: LakeReader, silver: str, source: str) -> int | None:
    """The bronze version `silver` holds the rows of (None: none yet)."""
    return lake.committed(silver, refined_from(silver, source)) if lake.exists(silver) else None


def consumed(lake: LakeReader, settings: Settings, table: str) -> int | None:
    """The last version of `table` all its pipeline readers have taken (silver refines bronze;
    identity's evidence and gold read a source's silver); None when no stage reads it
    incrementally, -1 when a reader has read none of it yet."""
    for s in settings.sources:
        silver = silver_table(settings.contract(s))
        if table == bronze_table(s):
            done = _refined(lake, silver, s)
            return -1 if done is None else done
        if table != silver:
            continue
        readers: list[int | None] = []
        if s in settings.profile.anchors:  # gold
            readers.append(silver_ranges(lake, settings).get(s, (None, 0))[0])
        if s in settings.identity.evidence_sources():
            evidence = lake.exists(EVIDENCE)
            readers.append(lake.committed(EVIDENCE, app_id(EVIDENCE, silver)) if evidence else None)
        if readers:
            return min(-1 if v is None else v for v in readers)
    return None


def gold_waiting(lake: LakeReader, settings: Settings, now: datetime) -> list[Hop]:
    """Per source gold is built from: its silver rows gold does not reflect yet (the quality
    gate judges them at the next promotion step)."""
    return [
        _versions_hop(
            lake, "silver -> gold", s, silver_table(settings.contract(s)), done, now, target
        )
        for s, (done, target) in silver_ranges(lake, settings).items()
    ]


def pipeline_health(
    lake: LakeReader,
    settings: Settings,
    *,
    serving_version: int | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Every hop's waiting items per source, the serving process's lag behind gold when given,
    and `behind`: the hop and subject whose oldest waiting item has waited longest (None when
    nothing waits)."""
    now = now or datetime.now(UTC)
    hops: list[Hop] = []
    for s in settings.sources:
        contract = settings.contract(s)
        hops.append(_landing_hop(settings, s, now))
        if settings.source.kind == "kafka":
            try:
                hops.append(_topic_hop(settings, s, now))
            except Exception as exc:  # the broker down is itself the answer
                hops.append(Hop("topic -> bronze", s, 0, "messages", None, f"broker: {exc}"))
        bronze, silver = bronze_table(s), silver_table(contract)
        if lake.exists(bronze):
            hops.append(
                _versions_hop(lake, "bronze -> silver", s, bronze, _refined(lake, silver, s), now)
            )
    hops.extend(gold_waiting(lake, settings, now))
    if serving_version is not None and lake.exists(PROFILES):
        hops.append(_serving_hop(lake, serving_version, now))
    late = [h for h in hops if h.waiting and h.oldest_s is not None]
    worst = max(late, key=lambda h: h.oldest_s or 0.0, default=None)
    return {
        "at": now.isoformat(),
        "behind": None if worst is None else {"hop": worst.hop, "subject": worst.subject},
        "hops": [h.as_json() for h in hops],
    }


def _serving_hop(lake: LakeReader, serving_version: int, now: datetime) -> Hop:
    """Gold versions the serving process has not applied, timed from the first one's commit."""
    target = lake.version(PROFILES)
    assert target is not None
    if serving_version >= target:
        return Hop(SERVING, PROFILES, 0, "versions", 0.0, f"serving version {serving_version}")
    history = lake.table(PROFILES).history(target - serving_version)  # type: ignore[union-attr]
    first = min(h["timestamp"] for h in history if h["version"] > serving_version)
    return Hop(
        SERVING,
        PROFILES,
        target - serving_version,
        "versions",
        round(now.timestamp() - first / 1000, 1),
        f"serving version {serving_version} of {target}",
    )
