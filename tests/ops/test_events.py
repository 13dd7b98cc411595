"""The event API's parts without a server: signatures, the delivery queue's order, backoff and
dead letters, subscription filters, and who may see which event."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest
from standardwebhooks import Webhook

from pipelines.activation.delivery import Visibility
from pipelines.activation.events import (
    Event,
    EventStore,
    FilterError,
    Subscription,
    check_subscription,
)
from pipelines.activation.webhooks import receiver_secret, signed_headers, verify
from pipelines.config import Settings

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


pytestmark = pytest.mark.ops


@pytest.fixture
def store(ops_url: str) -> EventStore:
    return EventStore(ops_url)


def _event(kind: str, person: str = "P1", **payload: Any) -> Event:
    return Event(1, f"{kind}:{person}:1", kind, person, None, payload, NOW)


def test_a_signature_is_standard_webhooks_and_verifies_only_for_its_body_secret_and_time() -> None:
    body = b'{"events": []}'
    at = datetime.now(UTC)
    headers = signed_headers("s" * 20, "evt_1", body, at)
    # the spec by hand: base64 of the HMAC-SHA256 of "<id>.<timestamp>.<body>" under the secret
    signed = f"evt_1.{int(at.timestamp())}.".encode() + body
    mac = base64.b64encode(hmac.new(b"s" * 20, signed, hashlib.sha256).digest()).decode()
    assert headers == {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": f"v1,{mac}",
    }
    # a receiver with a Standard Webhooks library, given the secret in its whsec_ form
    assert Webhook(receiver_secret("s" * 20)).verify(body, headers) == {"events": []}
    assert verify("s" * 20, body, headers)
    assert not verify("s" * 20, body + b" ", headers)
    assert not verify("t" * 20, body, headers)
    old = signed_headers("s" * 20, "evt_1", body, at - timedelta(hours=1))
    assert not verify("s" * 20, body, old)  # a replay an hour later
    assert not verify("s" * 20, body, {**headers, "webhook-signature": "garbage"})


def test_a_queue_waits_on_its_head_backs_off_and_parks_after_max_attempts(
    store: EventStore,
) -> None:
    with store.engine.begin() as conn:
        store.enqueue(conn, "sub:a", [(f"e{i}", "P1", "{}", NOW) for i in range(3)])
        store.enqueue(conn, "sub:a", [("e0", "P1", "{}", NOW)])  # queued once only
    head = store.batch("sub:a", 2)
    assert [m["message_key"] for m in head] == ["e0", "e1"]
    now = datetime.now(UTC)
    store.failed([m["id"] for m in head], "HTTP 503", now, 3, 1.0, 60)
    assert store.due_queues(now) == []  # the head waits: nothing behind it overtakes
    assert store.due_queues(now + timedelta(seconds=1.01)) == ["sub:a"]
    store.failed([head[0]["id"]], "HTTP 503", now, 3, 1.0, 60)  # attempt 2: waits 2 s
    assert store.due_queues(now + timedelta(seconds=1.5)) == []
    parked = store.failed([head[0]["id"]], "HTTP 503", now, 3, 1.0, 60)
    assert parked == 1
    dead = store.messages("sub:a", "dead")
    assert [(m["message_key"], m["attempts"], m["last_error"]) for m in dead] == [
        ("e0", 3, "HTTP 503")
    ]
    assert [m["message_key"] for m in store.batch("sub:a", 5)] == ["e1", "e2"]  # moved on
    assert store.redeliver("sub:a") == 1
    assert [m["message_key"] for m in store.batch("sub:a", 5)] == ["e0", "e1", "e2"]


def test_filters_match_person_or_payload_fields() -> None:
    sub = SimpleNamespace(
        event_types=["churn_risk.crossed"], filter={"direction": "up", "person_id": ["P1", "P2"]}
    )

    def matches(e: Event) -> bool:
        return Subscription.matches(sub, e)  # type: ignore[arg-type]

    assert matches(_event("churn_risk.crossed", "P2", direction="up"))
    assert not matches(_event("churn_risk.crossed", "P3", direction="up"))
    assert not matches(_event("churn_risk.crossed", "P1", direction="down"))
    assert not matches(_event("consent.changed", "P1", direction="up"))


@pytest.mark.parametrize(
    ("types", "filter_", "ops", "field"),
    [
        ([], {}, False, "event_types"),
        (["profile.exploded"], {}, False, "event_types[0]"),
        (["ops.schema_drift"], {}, False, "event_types[0]"),  # a channel asking for ops alerts
        (["churn_risk.crossed"], {}, True, "event_types[0]"),  # a steward asking for churn
        (["churn_risk.crossed"], {"iban": "x"}, False, "filter.iban"),  # no event type has it
        (["consent.changed"], {"purpose": {"$ne": 1}}, False, "filter.purpose"),
    ],
)
def test_subscriptions_name_known_types_for_their_audience_and_known_fields(
    types: list[str], filter_: dict[str, Any], ops: bool, field: str
) -> None:
    with pytest.raises(FilterError) as err:
        check_subscription(types, filter_, ops)
    assert err.value.field == field


def test_a_channel_sees_an_event_only_with_the_purpose_and_the_persons_consent(
    settings: Settings,
) -> None:
    db = duckdb.connect()
    db.execute(
        "CREATE TABLE profiles AS SELECT * FROM (VALUES ('P1', true, true), ('P2', false, false)) "
        "t(person_id, consent_profiling_granted, consent_marketing_granted)"
    )
    seen = Visibility(settings, SimpleNamespace(db=db))  # type: ignore[arg-type]
    churn1, churn2 = _event("churn_risk.crossed", "P1"), _event("churn_risk.crossed", "P2")
    entered2 = _event("segment.entered", "P2", purpose="marketing")
    exited2 = _event("segment.exited", "P2", purpose="marketing")
    drift = Event(2, "alert-1", "ops.schema_drift", None, None, {"source": "crm"}, NOW)
    seen.prepare([churn1, churn2, entered2, exited2, drift])
    assert seen.allows("nba_engine", churn1)  # holds profiling, P1 consented
    assert not seen.allows("nba_engine", churn2)  # P2 did not
    assert not seen.allows("sms_campaigns", churn1)  # holds marketing only
    assert not seen.allows("sms_campaigns", entered2)
    assert seen.allows("sms_campaigns", exited2)  # an exit is always told
    assert not seen.allows("contact_centre", exited2)  # not a marketing channel
    assert seen.allows("partner_insights", _event("consent.changed", "P2"))
    assert seen.allows(None, drift) and not seen.allows("nba_engine", drift)
    assert not seen.allows(None, churn1)
    json.dumps(churn1.as_json())  # what subscribers receive is plain JSON


def test_an_event_with_a_broken_payload_is_passed_on_not_stuck(store: EventStore) -> None:
    with store.engine.begin() as conn:
        store.log(
            conn,
            [
                {
                    "event_id": "a",
                    "event_type": "consent.changed",
                    "payload": "{not json",
                    "occurred_at": NOW,
                },
                {
                    "event_id": "b",
                    "event_type": "consent.changed",
                    "payload": "{}",
                    "occurred_at": NOW,
                },
                {
                    "event_id": "a",
                    "event_type": "consent.changed",
                    "payload": "{}",
                    "occurred_at": NOW,
                },  # logged once
            ],
        )
    events = store.events_after(0)
    assert [(e.event_id, e.payload) for e in events] == [("a", {"raw": "{not json"}), ("b", {})]
