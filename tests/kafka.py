"""A real single-node Apache Kafka broker (KRaft: broker and controller in one process) on
loopback, from the official artifacts `make test` fetches into .jvm/kafka: its own log folder
formatted with Kafka's storage tool, its own ports; stopped (and restarted, keeping its log)
on demand. For the Kafka tests and bench/freshness.py."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JARS = ROOT / ".jvm" / "kafka"

LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Broker:
    """One broker process over one log folder; `bootstrap` stays the same across restarts."""

    def __init__(self, root: Path, *, heap_mb: int = 512) -> None:
        if not any(JARS.glob("kafka_2.13-*.jar")):
            raise RuntimeError(
                f"no Kafka broker in {JARS}: `make test` fetches it (scripts/fetch-jvm.sh kafka)"
            )
        self.root, self.heap_mb = root, heap_mb
        self.port, self.controller_port = _free_port(), _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = root / "broker.log"
        self.props = root / "server.properties"
        self.props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                    f"CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={root / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "num.partitions=1",
                ]
            )
            + "\n"
        )
        (root / "log4j2.properties").write_text(
            LOG4J.format(log=self.log, level=os.environ.get("CDP_KAFKA_LOG_LEVEL", "WARN"))
        )
        self._java("kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", self.props)
        self.proc: subprocess.Popen[bytes] | None = None

    def _command(self, main: str, *args: str | Path) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}",
            "-cp",
            str(JARS / "*"),
            main,
            *map(str, args),
        ]

    def _java(self, main: str, *args: str | Path) -> None:
        done = subprocess.run(self._command(main, *args), capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{main} failed: {done.stderr[-2000:] or done.stdout[-2000:]}")

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the broker and wait until it answers metadata requests."""
        from confluent_kafka.admin import AdminClient

        self.proc = subprocess.Popen(
            self._command("kafka.Kafka", self.props),
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "broker.err").open("ab"),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not _accepts(self.port):  # listening first: librdkafka logs every refusal
            if self.proc.poll() is not None:
                raise RuntimeError(f"the broker exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the broker did not listen in {timeout_s} s: {self.tail()}")
            time.sleep(0.1)
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        while not admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).brokers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the broker did not answer in {timeout_s} s: {self.tail()}")
            time.sleep(0.1)

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker: a clean shutdown (SIGTERM), or SIGKILL with `kill`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self) -> str:
        parts = [p.read_text()[-1500:] for p in (self.log, self.root / "broker.err") if p.exists()]
        return "\n".join(parts)


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (22 characters),
    not starting with '-' (the storage tool would read it as an option, as Kafka's own
    `random-uuid` avoids)."""
    while (found := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))[0] == "-":
        pass
    return found


@contextmanager
def kafka_broker(*, heap_mb: int = 512) -> Iterator[Broker]:
    """A started broker on a fresh log folder, stopped and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="cdp-kafka-"))
    broker = Broker(root, heap_mb=heap_mb)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
