"""Signed delivery of one message to an HTTP endpoint or a folder.

An HTTP request carries `X-CDP-Signature: t=<unix seconds>,v1=<hex>`, where the hex is the
HMAC-SHA256 of `<t>.<body>` under the endpoint's secret, and `Idempotency-Key` (the message's
key: an event id, or a push part). A receiver recomputes the HMAC over the raw body, compares
in constant time, and refuses a `t` older than a few minutes (a replayed request). A folder
receives `<key>.json` written to a temporary name, flushed and renamed (never half a file).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

SIGNATURE_HEADER = "X-CDP-Signature"
MAX_SKEW_S = 300


class DeliveryError(RuntimeError):
    """The endpoint did not take the message (network error, timeout or a non-2xx answer)."""


def signature(secret: str, body: bytes, at: int | None = None) -> str:
    """The signature header value for `body` sent at `at` (unix seconds; now by default)."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: float | None = None) -> bool:
    """Whether `header` signs `body` under `secret` within MAX_SKEW_S (what a receiver does)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > MAX_SKEW_S:
        return False
    expected = signature(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True)
class Target:
    """Where a queue's messages go."""

    kind: str  # http | file
    url: str | None = None
    secret: str | None = None
    folder: Path | None = None


class Sender:
    """Sends messages over one pooled HTTP client (keep-alive per endpoint)."""

    def __init__(self, timeout_s: float) -> None:
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def send(self, target: Target, key: str, body: bytes, content_type: str) -> None:
        """Deliver one message; raise DeliveryError saying why it was not taken."""
        if target.kind == "file":
            assert target.folder is not None
            _drop(target.folder, key, body)
            return
        assert target.url is not None and target.secret
        headers = {
            "Content-Type": content_type,
            "Idempotency-Key": key,
            SIGNATURE_HEADER: signature(target.secret, body),
            "User-Agent": "telecom-cdp-delivery/1",
        }
        try:
            answer = self.client.post(target.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
        if not answer.is_success:
            raise DeliveryError(f"HTTP {answer.status_code}: {answer.text[:200]}")

    def close(self) -> None:
        self.client.close()


def _drop(folder: Path, key: str, body: bytes) -> None:
    """Write `<key>.json` atomically (a rerun of the same key overwrites it: idempotent)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = key.replace("/", "_").replace(":", "_")
    tmp = folder / f".{name}.json.tmp"
    with tmp.open("wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(folder / f"{name}.json")
