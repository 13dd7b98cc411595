"""A closed-loop HTTP/1.1 load generator: a fixed number of keep-alive connections, each sending
its next request as soon as the previous answer arrived, for a fixed time.

Pre-encoded requests and a bare asyncio (uvloop) socket loop keep the generator's own cost per
request to a few microseconds, so on a small machine most of the CPU goes to the server under
test. Used by bench/lookup.py (run in its own process) and by the API tests.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import uvloop


@dataclass
class LoadResult:
    """What one run measured: latency of every completed request, statuses, failures."""

    seconds: float
    latencies_ns: list[int] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies_ns)

    def summary(self, prefix: str) -> dict[str, float]:
        """requests per second and p50/p99/max latency in milliseconds, keys prefixed."""
        lat = np.asarray(self.latencies_ns, dtype=np.float64) / 1e6
        return {
            f"{prefix}_requests": self.requests,
            f"{prefix}_requests_per_s": round(self.requests / self.seconds, 1),
            f"{prefix}_p50_ms": round(float(np.percentile(lat, 50)), 3) if lat.size else 0.0,
            f"{prefix}_p99_ms": round(float(np.percentile(lat, 99)), 3) if lat.size else 0.0,
            f"{prefix}_max_ms": round(float(lat.max()), 3) if lat.size else 0.0,
            f"{prefix}_errors": len(self.errors),
        }


def encode_get(host: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    """One keep-alive GET request as bytes on the wire."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _connection(
    host: str,
    port: int,
    requests: list[bytes],
    deadline: float,
    warmup_until: float,
    result: LoadResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = random.randrange(len(requests))
    clock = time.perf_counter_ns
    try:
        while time.perf_counter() < deadline:
            request = requests[i % len(requests)]
            i += 1
            started = clock()
            status = await _exchange(reader, writer, request)
            if time.perf_counter() >= warmup_until:
                result.latencies_ns.append(clock() - started)
                result.statuses[status] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def _run(
    host: str, port: int, requests: list[bytes], concurrency: int, seconds: float, warmup: float
) -> LoadResult:
    start = time.perf_counter()
    result = LoadResult(seconds=seconds)
    await asyncio.gather(
        *(
            _connection(host, port, requests, start + warmup + seconds, start + warmup, result)
            for _ in range(concurrency)
        )
    )
    return result


def drive(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    concurrency: int = 32,
    seconds: float = 10.0,
    warmup: float = 2.0,
) -> LoadResult:
    """Run `concurrency` connections for warmup + seconds; only the measured seconds count."""
    return uvloop.run(_run(host, port, requests, concurrency, seconds, warmup))


@dataclass
class OpenLoopResult(LoadResult):
    """An open-loop run: latency counted from each request's scheduled send time (a stall of
    the server delays every request scheduled behind it, and all of that is counted), and how
    late the generator itself sent (its own share of the figures)."""

    rate: float = 0.0
    send_lag_ns: list[int] = field(default_factory=list)

    def summary(self, prefix: str) -> dict[str, float]:
        lat = np.asarray(self.latencies_ns, dtype=np.float64) / 1e6
        lag = np.asarray(self.send_lag_ns, dtype=np.float64) / 1e6
        figures = super().summary(prefix)
        figures.update(
            {
                f"{prefix}_offered_per_s": self.rate,
                f"{prefix}_p999_ms": round(float(np.percentile(lat, 99.9)), 3) if lat.size else 0.0,
                f"{prefix}_send_lag_p99_ms": (
                    round(float(np.percentile(lag, 99)), 3) if lag.size else 0.0
                ),
            }
        )
        return figures


async def _open_connection_worker(
    host: str,
    port: int,
    jobs: asyncio.Queue[tuple[int, bytes, bool] | None],
    result: OpenLoopResult,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    clock = time.perf_counter_ns
    try:
        while (job := await jobs.get()) is not None:
            scheduled, request, counted = job
            sent = clock()
            status = await _exchange(reader, writer, request)
            if counted:
                result.latencies_ns.append(clock() - scheduled)
                result.send_lag_ns.append(sent - scheduled)
                result.statuses[status] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a keep-alive connection and read its whole answer; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = _content_length(head)
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    raise ValueError(f"no content-length in response: {head[:200]!r}")


async def _run_open(
    host: str,
    port: int,
    requests: list[bytes],
    rate: float,
    seconds: float,
    warmup: float,
    connections: int,
) -> OpenLoopResult:
    result = OpenLoopResult(seconds=seconds, rate=rate)
    jobs: asyncio.Queue[tuple[int, bytes, bool] | None] = asyncio.Queue()
    workers = [
        asyncio.create_task(_open_connection_worker(host, port, jobs, result))
        for _ in range(connections)
    ]
    await asyncio.sleep(0.2)  # connections open before the schedule starts
    interval = int(1e9 / rate)
    start = time.perf_counter_ns()
    total = int((warmup + seconds) * rate)
    counted_from = int(warmup * rate)
    i = 0
    while i < total:
        now = time.perf_counter_ns()
        while i < total and start + i * interval <= now:
            jobs.put_nowait((start + i * interval, requests[i % len(requests)], i >= counted_from))
            i += 1
        # the loop's timers have millisecond resolution: the lag this adds is measured
        await asyncio.sleep(max(0.0, (start + i * interval - time.perf_counter_ns()) / 1e9))
    for _ in workers:
        jobs.put_nowait(None)
    await asyncio.gather(*workers)
    return result


def drive_open(
    host: str,
    port: int,
    requests: list[bytes],
    *,
    rate: float,
    seconds: float = 30.0,
    warmup: float = 3.0,
    connections: int = 64,
) -> OpenLoopResult:
    """Send `requests` (in turn) at a constant `rate` per second for warmup + seconds, whatever
    the answers' pace: each goes out on the next free of `connections` keep-alive connections
    (if none is free it waits, and the wait counts). Only the measured seconds count."""
    return uvloop.run(_run_open(host, port, requests, rate, seconds, warmup, connections))
