"""The Kafka source's settings: the default needs no broker, the environment switches it on,
an incomplete SASL set-up is refused at start-up, secrets come from the environment only, and
both clients (librdkafka, Spark's Java client) get the same cluster and credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, KafkaCfg, load_settings
from pipelines.lakehouse.kafka import (
    KafkaConfigError,
    client_config,
    key_field,
    message_key,
    spark_options,
)

pytestmark = pytest.mark.unit


def test_files_are_the_default_and_the_environment_switches_to_kafka(conf: Path) -> None:
    assert load_settings(conf, env={}).source.kind == "files"
    env = {
        "CDP_SOURCE_KIND": "kafka",
        "CDP_KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "CDP_KAFKA_TOPIC_PREFIX": "op1.",
    }
    source = load_settings(conf, env=env).source
    assert source.kind == "kafka"
    assert source.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert source.kafka.topic("network") == "op1.network"


def test_sasl_without_a_user_is_refused_naming_the_file(conf: Path) -> None:
    path = conf / "engine.yaml"
    path.write_text(
        path.read_text().replace("    topic_prefix: cdp.", "    security_protocol: SASL_SSL")
    )
    with pytest.raises(ConfigError, match=r"engine\.yaml[\s\S]*sasl_mechanism and sasl_username"):
        load_settings(conf, env={})


def test_unknown_source_kind_is_refused(conf: Path) -> None:
    with pytest.raises(ConfigError, match=r"engine\.yaml[\s\S]*source\.kind"):
        load_settings(conf, env={"CDP_SOURCE_KIND": "kinesis"})


def test_scram_over_tls_reaches_both_clients_with_the_password_from_the_environment(
    tmp_path: Path,
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    cfg = KafkaCfg(
        bootstrap_servers="b1:9096",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="cdp-stream",
        ssl_ca_location=ca,
    )
    env = {"CDP_KAFKA_SASL_PASSWORD": 'pa"ss'}
    assert client_config(cfg, env) == {
        "bootstrap.servers": "b1:9096",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "cdp-stream",
        "sasl.password": 'pa"ss',
        "ssl.ca.location": str(ca),
    }
    options = spark_options(cfg, env)
    assert options["kafka.bootstrap.servers"] == "b1:9096"
    assert options["kafka.sasl.mechanism"] == "SCRAM-SHA-512"
    assert options["kafka.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        'username="cdp-stream" password="pa\\"ss";'
    )
    assert options["kafka.ssl.truststore.type"] == "PEM"
    assert options["kafka.ssl.truststore.location"] == str(ca)
    with pytest.raises(KafkaConfigError, match=r"\$CDP_KAFKA_SASL_PASSWORD"):
        client_config(cfg, {})


def test_events_are_keyed_by_their_msisdn_digits(conf: Path) -> None:
    settings = load_settings(conf, env={})
    assert key_field(settings.contract("network")) == "msisdn"
    assert key_field(settings.contract("app")) == "msisdn"
    field = key_field(settings.contract("billing"))
    assert field == "msisdn"
    one = message_key({"msisdn": "+998 90 123-45-67"}, field)
    assert one == message_key({"msisdn": "998901234567"}, field) == b"998901234567"
    assert message_key({"account_id": "A1"}, field) is None  # round-robin, not one partition
    assert message_key({"msisdn": None}, field) is None
    assert message_key({"msisdn": True}, field) is None
