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
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            else:
                raise ValueError(f"no content-length in response: {head[:200]!r}")
            if length:
                await reader.readexactly(length)
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
