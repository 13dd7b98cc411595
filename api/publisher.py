"""The collector's Kafka producer: one idempotent producer per process (acks=all), whose
`publish` returns once the brokers acknowledged every event of a request's batch, so a 202
means the events are in the topic.

librdkafka does the batching, retries and ordering; a thread of this process serves its
delivery reports and hands each batch's outcome to the request waiting on it. A batch that
cannot be delivered within `delivery_timeout_s` is answered 503 (the client retries; a
retried event that did reach the topic is quarantined as a duplicate by silver, never
counted twice).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipelines.config import KafkaCfg, SourceContract
from pipelines.lakehouse.kafka import client_config, key_field, message_key

LOG = logging.getLogger("cdp.collector.kafka")


class PublishError(RuntimeError):
    """The brokers did not acknowledge a batch (or refused it): nothing may be answered 202."""


class TooLargeError(ValueError):
    """An event is larger than the topic accepts."""


@dataclass(frozen=True)
class Published:
    topic: str
    events: int


class _Batch:
    """One request's events in flight: counts the delivery reports (on the producer's thread)
    and resolves the request's future on its loop when the last one arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop, self.waiting = loop, size
        self.future: asyncio.Future[KafkaError | None] = loop.create_future()
        self.error: KafkaError | None = None

    def delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.waiting -= 1
        if self.waiting == 0:
            self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.error)


class KafkaPublisher:
    """See the module docstring."""

    def __init__(self, cfg: KafkaCfg, contracts: Mapping[str, SourceContract]) -> None:
        self.cfg = cfg
        self._keys = {source: key_field(c) for source, c in contracts.items()}
        self._producer = Producer(
            client_config(cfg)
            | {
                "enable.idempotence": True,  # acks=all, no duplicates or reordering on retry
                "acks": "all",
                "linger.ms": 2,
                "compression.type": "lz4",
                "delivery.timeout.ms": int(cfg.delivery_timeout_s * 1000),
                "message.max.bytes": cfg.max_message_bytes,
            },
            logger=LOG,  # librdkafka's own log (a broker unreachable, ...) into the app's
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kafka-producer", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def encoded(
        self, source: str, events: list[dict[str, Any]]
    ) -> list[tuple[bytes | None, bytes]]:
        """(key, value) per event; raises TooLargeError before anything is sent."""
        field = self._keys.get(source)
        out = []
        for i, event in enumerate(events):
            value = json.dumps(event, separators=(",", ":")).encode()
            if len(value) > self.cfg.max_message_bytes:
                raise TooLargeError(
                    f"event {i + 1} is {len(value)} bytes; the topic takes at most "
                    f"{self.cfg.max_message_bytes} (source.kafka.max_message_bytes)"
                )
            out.append((message_key(event, field), value))
        return out

    async def publish(self, source: str, events: list[dict[str, Any]]) -> Published:
        """Send a batch to the source's topic and wait for the brokers' acknowledgement."""
        messages = self.encoded(source, events)
        topic = self.cfg.topic(source)
        if not messages:
            return Published(topic, 0)
        batch = _Batch(asyncio.get_running_loop(), len(messages))
        try:
            for key, value in messages:
                while True:
                    try:
                        self._producer.produce(topic, value, key, on_delivery=batch.delivered)
                        break
                    except BufferError:  # the local queue is full: let deliveries drain it
                        await asyncio.sleep(0.005)
        except KafkaException as exc:  # the sent ones are delivered; the client retries them all
            raise PublishError(f"topic {topic}: {exc.args[0].str()}") from None
        error = await asyncio.wait_for(batch.future, self.cfg.delivery_timeout_s + 5)
        if error is not None:
            raise PublishError(f"topic {topic}: {error.str()}")
        return Published(topic, len(messages))

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the report thread, then deliver what is queued (up to `timeout_s`)."""
        self._stop.set()
        self._thread.join()
        self._producer.flush(timeout_s)
