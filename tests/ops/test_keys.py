"""API keys on both ops databases: a key with an expiry stops working at it, and a rotation
gives a new key at once while the old one keeps working for the overlap window only."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from pipelines.ops import keys as keys_module
from pipelines.ops.keys import KeyStore, api_keys

pytestmark = pytest.mark.ops


@pytest.fixture(autouse=True)
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every verification reads the database (the cache would hide changes for 5 s)."""
    monkeypatch.setattr(keys_module, "CACHE_S", -1.0)


def test_an_expired_key_is_refused(ops_url: str) -> None:
    store = KeyStore(ops_url)
    past = store.create(
        "old tool", "marketing", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert store.verify(past) is None
    soon = store.create(
        "short-lived", "steward", expires_at=datetime.now(UTC) + timedelta(seconds=2)
    )
    assert store.verify(soon) is not None
    time.sleep(2.1)
    assert store.verify(soon) is None
    forever = store.create("no expiry", "admin")
    assert store.verify(forever) is not None
    listed = {r["name"]: r for r in store.list()}
    assert listed["no expiry"]["expires_at"] is None and listed["old tool"]["expires_at"]


def test_rotation_overlaps_then_retires_the_old_key(ops_url: str) -> None:
    store = KeyStore(ops_url)
    old = store.create("SMS tool", "channel", "sms_campaigns")
    old_id = old.split("_")[1]
    new = store.rotate(old_id, timedelta(hours=1))
    assert new != old
    for key in (old, new):  # both work during the overlap, for the same holder
        caller = store.verify(key)
        assert caller is not None and (caller.role, caller.channel) == ("channel", "sms_campaigns")
    with store.engine.begin() as conn:  # the overlap is over
        past = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(update(api_keys).where(api_keys.c.key_id == old_id).values(expires_at=past))
    assert store.verify(old) is None and store.verify(new) is not None
    with pytest.raises(KeyError, match="in force"):
        store.rotate(old_id, timedelta(hours=1))  # an expired key cannot be rotated


def test_rotating_a_key_with_a_lifetime_keeps_its_lifetime(ops_url: str) -> None:
    store = KeyStore(ops_url)
    created = datetime.now(UTC)
    old = store.create("feed", "source", "app", expires_at=created + timedelta(days=90))
    new = store.rotate(old.split("_")[1], timedelta(days=200))  # overlap capped at the expiry
    listed = {r["key_id"]: r for r in store.list()}
    old_row, new_row = listed[old.split("_")[1]], listed[new.split("_")[1]]

    def utc(at: datetime) -> datetime:
        return at if at.tzinfo else at.replace(tzinfo=UTC)

    assert abs(utc(old_row["expires_at"]) - (created + timedelta(days=90))) < timedelta(minutes=1)
    lifetime = utc(new_row["expires_at"]) - utc(new_row["created_at"])
    assert abs(lifetime - timedelta(days=90)) < timedelta(minutes=1)


def test_a_steward_key_names_its_domain_and_acts_for_it_alone(ops_url: str) -> None:
    store = KeyStore(ops_url)
    billing = store.verify(store.create("billing steward", "steward", "billing"))
    consent = store.verify(store.create("consent steward", "steward", "consent"))
    admin = store.verify(store.create("admin", "admin"))
    assert billing is not None and consent is not None and admin is not None
    assert billing.stewards("billing") and not billing.stewards("crm")
    assert not billing.stewards("consent") and consent.stewards("consent")
    assert admin.stewards("crm") and admin.stewards("consent")
    with pytest.raises(ValueError, match="names exactly one"):
        store.create("marketing with a domain", "marketing", "billing")
