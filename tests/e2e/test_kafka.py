"""The Kafka source against a real broker (tests/kafka.py: Apache Kafka in KRaft mode on
loopback): the stream reads the topics with the same contracts, quarantine and exactly-once
bronze as landing files; the collector answers 202 only for what the brokers acknowledged."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.server import ServeProcess
from pipelines.config import load_settings
from pipelines.lakehouse.kafka import key_field, message_key
from pipelines.lakehouse.lake import Lake
from pipelines.ops.keys import KeyStore
from tests.e2e.runs import CDP, ONE_FILE_PER_BATCH, cdp_env, conf_with, landed_twice, snapshot
from tests.kafka import Broker, kafka_broker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    with kafka_broker() as b:
        yield b


def kafka_conf(tmp: Path, broker: Broker, **kafka: Any) -> Path:
    """The project's config with the Kafka source on `broker`, under topics of its own."""
    conf = conf_with(tmp, **ONE_FILE_PER_BATCH)
    raw = yaml.safe_load((conf / "engine.yaml").read_text())
    raw["source"] = {
        "kind": "kafka",
        "kafka": {
            "bootstrap_servers": broker.bootstrap,
            "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
            "partitions": 4,
            **kafka,
        },
    }
    (conf / "engine.yaml").write_text(yaml.safe_dump(raw))
    return conf


def cdp(conf: Path, root: Path, *args: str) -> str:
    done = subprocess.run(
        [*CDP, *args], env=cdp_env(conf, root), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"cdp {' '.join(args)}: {done.stderr[-3000:]}"
    return done.stdout


def publish_landing(conf: Path, landing: Path) -> int:
    """Every line of the landing files, as a message on its source's topic (keyed as the
    collector keys it), in file order; the number of messages."""
    settings = load_settings(conf)
    cfg = settings.source.kafka
    producer = Producer({"bootstrap.servers": cfg.bootstrap_servers, "enable.idempotence": True})
    sent = 0
    for source in settings.sources:
        field = key_field(settings.contract(source))
        for path in sorted((landing / source).glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                key = message_key(event, field) if isinstance(event, dict) else None
                producer.produce(cfg.topic(source), line.encode(), key)
                producer.poll(0)
                sent += 1
    assert producer.flush(30) == 0, "the broker did not take every message"
    return sent


def _commits(lake_root: Path) -> int:
    return sum(1 for _ in lake_root.glob("*/*/_delta_log/*.json"))


def test_kafka_source_killed_and_restarted_equals_the_file_source(
    tmp_path: Path, broker: Broker
) -> None:
    """One operator's events published to the topics, read by `cdp stream` killed with SIGKILL
    three times at seeded random points (then finished by `cdp run`), give the lake the same
    events through landing files give: the same bronze lines, silver events, quarantine rows
    with the same reasons and gold profiles; nothing lost, nothing twice."""
    conf = kafka_conf(tmp_path, broker)
    files, topics = tmp_path / "files", tmp_path / "topics"
    landed_twice(conf_with(tmp_path / "plain", **ONE_FILE_PER_BATCH), files, topics, 3)
    # the topics' run reads its events from Kafka only; the reference tables stay files
    for source in load_settings(conf).sources:
        shutil.rmtree(topics / "landing" / source, ignore_errors=True)
    assert "created, 4 partitions" in cdp(conf, topics, "kafka", "init")
    published = publish_landing(conf, files / "landing")

    draw = random.Random(23)
    for _ in range(3):
        target = _commits(topics / "lake") + draw.randint(2, 8)
        proc = subprocess.Popen(
            [*CDP, "stream"],
            env=cdp_env(conf, topics),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while _commits(topics / "lake") < target and time.monotonic() < deadline:
            assert proc.poll() is None, f"the stream exited with {proc.returncode}"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    cdp(conf, topics, "run")
    cdp(conf_with(tmp_path / "plain2", **ONE_FILE_PER_BATCH), files, "run")

    got, want = snapshot(topics), snapshot(files)
    assert sum(got["bronze.network"].values()) > 0
    lines = sum(sum(got[f"bronze.{s}"].values()) for s in ("billing", "network", "app", "crm"))
    assert lines == published, "a message was lost or ingested twice"
    assert got == want
    origins = Lake(topics / "lake").read_arrow("bronze.app", ["file_path"]).column("file_path")
    prefix = load_settings(conf).source.kafka.topic("app")
    assert all(o.startswith(f"kafka://{prefix}/") for o in origins.to_pylist())


def _topic_messages(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None, bytes]]:
    """(partition, offset, key, value) of every message in a topic, read from the beginning."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    ends = {}
    for p in meta.partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        ends[p] = high
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out: list[tuple[int, int, bytes | None, bytes]] = []
    deadline = time.monotonic() + 30
    while sum(1 for _ in out) < sum(ends.values()) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            out.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
    consumer.close()
    return out


def _event(user: int, msisdn: str, seq: int) -> dict[str, Any]:
    """An app open of app user `user` on line `msisdn`, the `seq`th second after 10:00."""
    return {
        "event_id": f"kafka-test-{uuid.uuid4().hex}",
        "source": "app",
        "event_type": "open",
        "event_ts": f"2026-03-01T10:{seq // 60:02d}:{seq % 60:02d}+00:00",
        "schema_version": 1,
        "msisdn": msisdn,
        "app_user_id": f"U{user:06d}",
        "platform": "android",
    }


def _collect(url: str, key: str, broker: Broker, topic: str, follow: str) -> list[dict[str, Any]]:
    """Forty batches through the collector (each 202, naming the topic), then one while the
    broker is killed (503, never 202), then one after its restart; the events answered 202."""
    accepted: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=30) as client:

        def post(events: list[dict[str, Any]]) -> httpx.Response:
            return client.post(
                "/v1/collect/app",
                content="\n".join(json.dumps(e) for e in events),
                headers={"X-API-Key": key, "Content-Type": "application/x-ndjson"},
            )

        for seq in range(40):
            batch = [_event(seq, follow, seq), _event(seq, f"99890{seq:07d}", seq)]
            answer = post(batch)
            assert answer.status_code == 202, answer.text
            assert answer.json() == {"accepted": 2, "file": None, "topic": topic}
            accepted += batch
        broker.stop(kill=True)
        down = post([_event(99, follow, 99)])
        assert down.status_code == 503, down.text
        assert down.headers["retry-after"] == "1"
        broker.start()
        after = [_event(100, follow, 100)]
        assert post(after).status_code == 202
    return accepted + after


def _publish_bad(bootstrap: str, topic: str, follow: str) -> tuple[dict[str, str], dict[str, Any]]:
    """Messages from another producer that break the contract, then a good one: each bad
    message's origin (`kafka://topic/partition/offset`) by the reason expected, and the good
    event."""
    producer = Producer({"bootstrap.servers": bootstrap})
    bad = {
        "bad_json": b'{"event_id": "cut-short", "source": "ap',
        "oversized": json.dumps({**_event(7, follow, 7), "pad": "x" * 4000}).encode(),
        "unknown_event_type": json.dumps(
            {**_event(8, follow, 8), "event_type": "teleport"}
        ).encode(),
    }
    origin: dict[str, str] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None
        reason = next(r for r, v in bad.items() if v == msg.value())
        origin[reason] = f"kafka://{topic}/{msg.partition()}/{msg.offset()}"

    for value in bad.values():
        producer.produce(topic, value, follow.encode(), on_delivery=delivered)
    good = _event(200, follow, 200)
    producer.produce(topic, json.dumps(good).encode(), follow.encode())
    assert producer.flush(30) == 0
    return origin, good


def test_collector_acknowledged_events_survive_a_broker_kill_and_keep_their_order(
    tmp_path: Path, broker: Broker
) -> None:
    """Through the collector with the Kafka source: every batch answered 202 is in the topic
    after the broker is killed (SIGKILL) and restarted; while the broker is down the collector
    answers 503, never 202; one subscriber's events sit in one partition in the order they were
    posted, and the stream ingests them in that order; messages that break the contract (not
    JSON, oversized, wrong schema) are quarantined with their topic, partition and offset
    while the good ones around them reach silver."""
    conf = kafka_conf(tmp_path, broker, delivery_timeout_s=3)
    raw = yaml.safe_load((conf / "engine.yaml").read_text())
    raw["engine"]["max_line_bytes"] = 2048
    (conf / "engine.yaml").write_text(yaml.safe_dump(raw))
    root = tmp_path / "data"
    cdp(conf, root, "kafka", "init")
    settings = load_settings(conf, cdp_env(conf, root))
    topic = settings.source.kafka.topic("app")
    key = KeyStore(settings.database_url).create("app feed", "source", "app")
    follow = "998901112233"
    server = ServeProcess(root, {"CDP_CONF_DIR": str(conf)}, ready_path="/healthz")
    try:
        accepted = _collect(server.url, key, broker, topic, follow)
    finally:
        assert server.stop()

    messages = _topic_messages(broker.bootstrap, topic)
    by_id = {json.loads(v)["event_id"]: (p, o, k) for p, o, k, v in messages}
    missing = [e["event_id"] for e in accepted if e["event_id"] not in by_id]
    assert not missing, f"{len(missing)} events answered 202 are not in the topic"
    followed = [e["event_id"] for e in accepted if e["msisdn"] == follow]
    places = [by_id[i] for i in followed]
    assert {p for p, _, _ in places} == {places[0][0]}, "one subscriber's events span partitions"
    assert [o for _, o, _ in places] == sorted(o for _, o, _ in places), "posted order lost"
    assert {k for _, _, k in places} == {follow.encode()}

    origin, good = _publish_bad(broker.bootstrap, topic, follow)
    cdp(conf, root, "run")
    lake = Lake(root / "lake")
    silver = set(lake.read_arrow("silver.app", ["event_id"]).column("event_id").to_pylist())
    assert {e["event_id"] for e in [*accepted, good]} <= silver
    quarantine = lake.read_arrow("silver.quarantine", ["reason_code", "file_path"]).to_pylist()
    assert {r["reason_code"]: r["file_path"] for r in quarantine} == origin
    bronze = lake.read_arrow("bronze.app", ["event_id", "batch_id", "line_id"]).to_pylist()
    order = {r["event_id"]: (r["batch_id"], r["line_id"]) for r in bronze}
    assert sorted(followed, key=order.__getitem__) == followed, "ingested out of posted order"
