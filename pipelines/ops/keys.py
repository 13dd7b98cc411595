"""API keys: created once (the secret is shown once), stored hashed, revocable, expiring.

A key is `cdp_<key id>_<secret>`. The store keeps the key id, the SHA-256 of the secret, and who
the key is for: a channel (`role = channel`, bound to one channel of the policy), a source
(`role = source`, bound to one source: it may post events to the collector) or a role (marketing,
steward, admin). A steward key names its domain: one source (its contract status, alerts and
releases) or `consent` (the audit of lookups and pushes); a steward key without one (made before
domains) has every domain. The `channel` column holds the bound channel, source or domain.
Verification looks the key id up and compares hashes in constant time. A key may expire
(`expires_at`); rotating a key makes a new one for the same holder and lets the old one work for
an overlap window, so a client can switch without an outage. SQLite by default; any SQLAlchemy
URL.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Column, DateTime, String, Table, select, update
from sqlalchemy.engine import Engine

from pipelines.ops.store import metadata, ops_engine

ROLES = ("channel", "source", "marketing", "steward", "admin")
BOUND = ("channel", "source")  # roles whose key names one channel or one source
CONSENT = "consent"  # the consent steward's domain (a source steward's is the source's name)
CACHE_S = 5.0  # a revoked key stops working within this many seconds in every process

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(16), primary_key=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("channel", String(100)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),  # null: never
)


@dataclass(frozen=True)
class Caller:
    """Who a verified key belongs to."""

    key_id: str
    name: str
    role: str
    channel: str | None  # the bound channel, source, or a steward's domain

    def stewards(self, domain: str) -> bool:
        """Whether this key may act for `domain` (a source, or `consent`): admins and stewards
        of that domain (or of every domain)."""
        return self.role == "admin" or (self.role == "steward" and self.channel in (None, domain))


class Stale(enum.Enum):
    """The cache cannot answer: ask the database."""

    STALE = "stale"


STALE = Stale.STALE


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """Keys in a SQL database, with a short in-process cache for the request path."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = ops_engine(url)
        # key id -> (when loaded, (secret digest, caller, expiry as epoch seconds) or None)
        self._cache: dict[str, tuple[float, tuple[str, Caller, float | None] | None]] = {}

    def create(
        self,
        name: str,
        role: str,
        channel: str | None = None,
        expires_at: datetime | None = None,
    ) -> str:
        """A new key; returns the full key (shown once, stored only as a hash)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if role != "steward" and (role in BOUND) != (channel is not None):
            raise ValueError(
                "a channel or source key names exactly one channel or source, a steward key "
                "its domain; other roles none"
            )
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    secret_sha256=_digest(secret),
                    name=name,
                    role=role,
                    channel=channel,
                    created_at=datetime.now(UTC),
                    expires_at=expires_at,
                )
            )
        return f"cdp_{key_id}_{secret}"

    def rotate(self, key_id: str, overlap: timedelta) -> str:
        """A new key for the holder of `key_id` (same name, role, channel and lifetime); the
        old key keeps working for `overlap` (or until its own expiry, if sooner). Returns the
        new key; KeyError for an unknown, revoked or expired key."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)).first()
            if row is None or row.revoked_at is not None or _expired(row.expires_at, now):
                raise KeyError(f"no key {key_id!r} in force (cdp keys list)")
            lifetime = _utc(row.expires_at) - _utc(row.created_at) if row.expires_at else None
            ends = (
                now + overlap
                if row.expires_at is None
                else min(now + overlap, _utc(row.expires_at))
            )
            conn.execute(
                update(api_keys).where(api_keys.c.key_id == key_id).values(expires_at=ends)
            )
        self._cache.pop(key_id, None)
        return self.create(row.name, row.role, row.channel, now + lifetime if lifetime else None)

    def revoke(self, key_id: str) -> bool:
        with self.engine.begin() as conn:
            done = conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        self._cache.pop(key_id, None)
        return done.rowcount == 1

    def list(self) -> list[dict[str, object]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).mappings()
            return [{k: v for k, v in r.items() if k != "secret_sha256"} for r in rows]

    def verify(self, key: str | None) -> Caller | None:
        """The caller a presented key belongs to; None for a malformed, unknown, revoked or
        expired key."""
        parsed = _parse(key)
        if parsed is None:
            return None
        if self._stale(parsed[0]):
            self._load(parsed[0])
        return self._check(*parsed)

    def verify_cached(self, key: str | None) -> Caller | None | Stale:
        """`verify` from the in-process cache alone (no I/O, for the event loop); STALE when
        the key's entry is missing or older than CACHE_S and `verify` must ask the database."""
        parsed = _parse(key)
        if parsed is None:
            return None
        return STALE if self._stale(parsed[0]) else self._check(*parsed)

    def _stale(self, key_id: str) -> bool:
        cached = self._cache.get(key_id)
        return cached is None or time.monotonic() - cached[0] > CACHE_S

    def _load(self, key_id: str) -> None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(api_keys).where(
                        api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None)
                    )
                )
                .mappings()
                .first()
            )
        found = (
            (
                str(row["secret_sha256"]),
                Caller(key_id, str(row["name"]), str(row["role"]), row["channel"]),
                _utc(row["expires_at"]).timestamp() if row["expires_at"] else None,
            )
            if row
            else None
        )
        self._cache[key_id] = (time.monotonic(), found)

    def _check(self, key_id: str, secret: str) -> Caller | None:
        found = self._cache[key_id][1]
        if found is None:
            return None
        digest, caller, expires = found
        if expires is not None and time.time() >= expires:
            return None
        return caller if hmac.compare_digest(digest, _digest(secret)) else None


def _utc(at: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _expired(expires_at: datetime | None, now: datetime) -> bool:
    return expires_at is not None and _utc(expires_at) <= now


def _parse(key: str | None) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key."""
    if not key or not key.startswith("cdp_") or key.count("_") < 2:
        return None
    _, key_id, secret = key.split("_", 2)
    return key_id, secret
