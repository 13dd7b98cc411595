"""Kafka as the event bus: client settings for librdkafka (the collector, `cdp kafka init`) and for
Spark's Kafka connector (the stream), the topics' set-up, and the key that keeps one
subscriber's events in order.

One topic per source (`<topic_prefix><source>`), keyed by the event's MSISDN (digits only), so
one line's events share a partition and the stream reads them in the order they were
published. The connector keeps its offsets in the stream's checkpoint; bronze's app
transaction (query id + batch id) makes a replayed batch a no-op, as for files.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.config import KafkaCfg, SourceContract

# The key field's type, in order of preference (the MSISDN: one line's events in order).
_IDENTIFIER_TYPES = ("msisdn", "iccid", "email")
_NOT_DIGITS = re.compile(r"\D")


class KafkaConfigError(RuntimeError):
    """A secret the Kafka settings name is not in the environment."""


def _secret(var: str, what: str, env: Mapping[str, str]) -> str:
    value = env.get(var)
    if not value:
        raise KafkaConfigError(
            f"{what} is read from ${var}, which is not set (engine.yaml source.kafka names it)"
        )
    return value


def client_config(cfg: KafkaCfg, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """librdkafka settings for a producer or admin client of the configured cluster."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {
        "bootstrap.servers": cfg.bootstrap_servers,
        "security.protocol": cfg.security_protocol,
    }
    if cfg.security_protocol.startswith("SASL_"):
        out |= {
            "sasl.mechanism": cfg.sasl_mechanism,
            "sasl.username": cfg.sasl_username,
            "sasl.password": _secret(cfg.sasl_password_env, "the SASL password", env),
        }
    if cfg.ssl_ca_location:
        out["ssl.ca.location"] = str(cfg.ssl_ca_location)
    if cfg.ssl_certificate_location:
        out["ssl.certificate.location"] = str(cfg.ssl_certificate_location)
    if cfg.ssl_key_location:
        out["ssl.key.location"] = str(cfg.ssl_key_location)
        if env.get(cfg.ssl_key_password_env):
            out["ssl.key.password"] = env[cfg.ssl_key_password_env]
    return out


_JAAS = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def spark_options(cfg: KafkaCfg, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The same cluster and credentials for Spark's Kafka connector (the Java client's names,
    prefixed `kafka.`; PEM files as librdkafka takes them, so one set of files serves both)."""
    env = os.environ if env is None else env
    out = {
        "kafka.bootstrap.servers": cfg.bootstrap_servers,
        "kafka.security.protocol": cfg.security_protocol,
    }
    if cfg.security_protocol.startswith("SASL_"):
        assert cfg.sasl_mechanism and cfg.sasl_username  # checked by KafkaCfg
        password = _secret(cfg.sasl_password_env, "the SASL password", env)
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        out |= {
            "kafka.sasl.mechanism": cfg.sasl_mechanism,
            "kafka.sasl.jaas.config": f"{_JAAS[cfg.sasl_mechanism]} required "
            f'username="{cfg.sasl_username}" password="{quoted}";',
        }
    if cfg.ssl_ca_location:
        out |= {
            "kafka.ssl.truststore.type": "PEM",
            "kafka.ssl.truststore.location": str(cfg.ssl_ca_location),
        }
    if cfg.ssl_certificate_location and cfg.ssl_key_location:
        out |= {
            "kafka.ssl.keystore.type": "PEM",
            "kafka.ssl.keystore.certificate.chain": cfg.ssl_certificate_location.read_text(),
            "kafka.ssl.keystore.key": cfg.ssl_key_location.read_text(),
        }
        if env.get(cfg.ssl_key_password_env):
            out["kafka.ssl.key.password"] = env[cfg.ssl_key_password_env]
    return out


def key_field(contract: SourceContract) -> str | None:
    """The payload field an event is keyed by: its MSISDN when the source sends one (one
    line's events in one partition, in order), else the first other identifier."""
    fields = contract.silver_fields()
    for wanted in _IDENTIFIER_TYPES:
        for name, spec in fields.items():
            if spec.type == wanted:
                return name
    return None


def message_key(event: Mapping[str, Any], field: str | None) -> bytes | None:
    """The Kafka key of one event: the key field's value (an MSISDN by its digits, so
    `+998 90 123` and `99890123` share a partition); None (spread round-robin) without one."""
    if field is None:
        return None
    value = event.get(field)
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    text = str(value)
    digits = _NOT_DIGITS.sub("", text)
    return (digits or text.strip().lower()).encode() or None


@dataclass(frozen=True)
class TopicState:
    """One source's topic as `cdp kafka init` left it."""

    source: str
    topic: str
    partitions: int
    created: bool


def init_topics(cfg: KafkaCfg, sources: list[str], timeout_s: float = 30.0) -> list[TopicState]:
    """Create the sources' topics that do not exist yet (idempotent: existing topics are left
    as they are and reported with their partition count)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(cfg))
    topics = {cfg.topic(s): s for s in sources}
    existing = admin.list_topics(timeout=timeout_s).topics
    wanted = [
        NewTopic(
            topic,
            num_partitions=cfg.partitions,
            replication_factor=cfg.replication_factor,
            config={
                "min.insync.replicas": str(cfg.min_insync_replicas),
                "retention.ms": str(cfg.retention_hours * 3_600_000),
                "max.message.bytes": str(cfg.max_message_bytes),
                "cleanup.policy": "delete",
            },
        )
        for topic in topics
        if topic not in existing
    ]
    created: set[str] = set()
    if wanted:
        for topic, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
            try:
                future.result()
                created.add(topic)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    deadline = time.monotonic() + timeout_s
    while True:  # a new topic's partitions show in the metadata a moment after its creation
        metadata = admin.list_topics(timeout=timeout_s).topics
        if all(t in metadata and metadata[t].partitions for t in topics):
            break
        if time.monotonic() > deadline:
            missing = sorted(t for t in topics if t not in metadata)
            raise TimeoutError(f"topics {missing} not in the cluster's metadata after creation")
        time.sleep(0.2)
    return [
        TopicState(source, topic, len(metadata[topic].partitions), topic in created)
        for topic, source in topics.items()
    ]
