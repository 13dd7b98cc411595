"""Signed delivery of one message to an HTTP endpoint or a folder.

An HTTP request is signed the Standard Webhooks way (standardwebhooks.com, its reference library):
`webhook-id` (the message's key: an event id, or a push part; also sent as `Idempotency-Key`),
`webhook-timestamp` (unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`. The HMAC key is the endpoint's secret as UTF-8 bytes; a receiver
using a Standard Webhooks library passes it as `whsec_<base64 of the secret>` (`receiver_secret`)
and the library checks the signature in constant time and refuses a timestamp more than five
minutes off (a replayed request). A folder receives `<key>.json` written to a temporary name,
flushed and renamed (never half a file).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from standardwebhooks import Webhook, WebhookVerificationError


class DeliveryError(RuntimeError):
    """The endpoint did not take the message (network error, timeout or a non-2xx answer)."""


def signed_headers(
    secret: str, key: str, body: bytes, at: datetime | None = None
) -> dict[str, str]:
    """The Standard Webhooks headers that sign `body` as message `key`, sent at `at` (now)."""
    when = at or datetime.now(UTC)
    return {
        "webhook-id": key,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret.encode()).sign(key, when, body),
    }


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether `headers` sign `body` under `secret`, sent within the last five minutes (what a
    receiver does, with the reference library)."""
    try:
        Webhook(secret.encode()).verify(body, dict(headers), json_parse=False)
    except WebhookVerificationError:
        return False
    return True


def receiver_secret(secret: str) -> str:
    """`secret` as a Standard Webhooks library takes it (`whsec_` and base64)."""
    return "whsec_" + base64.b64encode(secret.encode()).decode()


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
            **signed_headers(target.secret, key, body),
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
