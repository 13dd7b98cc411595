"""Pushes and the event API against a live server and a webhook receiver on loopback: push
diffs (enter and exit) reach the channel signed and audited; subscribed events arrive at least
once, exactly once after de-duplication, in order per person, only where the channel may see
them; dead letters can be redelivered; the SSE stream resumes from Last-Event-ID."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pyarrow as pa
import pytest

from bench.receiver import Receiver
from bench.server import ServeProcess
from pipelines.lakehouse.catalog import OUTBOX, PROFILES
from pipelines.ops.keys import KeyStore
from pipelines.ops.status import Alerts
from pipelines.profile.state import OUTBOX_SCHEMA
from tests.api.conftest import SECRET, call, create_segment, may_use, new_version, wait_for
from tests.conftest import settings_for

pytestmark = pytest.mark.api


def _outbox(
    served: dict[str, Any], events: list[tuple[str, str | None, dict[str, Any]]]
) -> list[str]:
    """Append (type, person, payload) change events to ops.outbox as gold would; their ids."""
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    rows = [
        {
            "event_id": f"{kind}:{person}:test-{tag}-{i}",
            "event_type": kind,
            "person_id": person,
            "related_person_id": None,
            "profile_version": i,
            "payload": json.dumps(payload),
            "occurred_at": now,
        }
        for i, (kind, person, payload) in enumerate(events)
    ]
    served["lake"].append_once(OUTBOX, pa.Table.from_pylist(rows, OUTBOX_SCHEMA), {}, stage="t")
    return [str(r["event_id"]) for r in rows]


def _subscribe(served: dict[str, Any], key: str, types: list[str], url: str, **filter_: Any) -> str:
    """Subscribe `url` for the key named `key`; the subscription id (201 asserted)."""
    body = {"event_types": types, "filter": filter_, "url": url, "secret": SECRET}
    r = call(served, "POST", "/v1/subscriptions", key, body)
    assert r.status_code == 201, r.text
    assert "secret" not in r.json()
    return str(r.json()["subscription_id"])


def _events_at(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    """Every event the receiver saw at `path` (duplicates included), in arrival order."""
    return [e for r in receiver.at(path) for e in r.json()["events"]]


def _persons(served: dict[str, Any], purpose: str, granted: bool, n: int) -> list[str]:
    profiles = served["lake"].read_polars(PROFILES)
    column = pl.col(f"consent_{purpose}_granted").fill_null(False)
    chosen = profiles.filter(column if granted else ~column).sort("person_id")
    return list(chosen["person_id"].head(n))


def test_push_sends_who_entered_then_who_exited_signed_and_audited(
    served: dict[str, Any], receiver: Receiver
) -> None:
    settings = served["settings"]
    rule = {"attr": "value_segment", "op": "is_not_null"}
    sid = create_segment(served, "Upsell", rule)
    profiles = served["lake"].read_polars(PROFILES)
    reachable = profiles.filter(
        pl.col("value_segment").is_not_null() & pl.col("consent_marketing_granted").fill_null(False)
    )
    assert reachable.height > 1

    first = call(
        served, "POST", f"/v1/segments/{sid}/push", "marketing", {"channel": "sms_campaigns"}
    )
    assert first.status_code == 202, first.text
    push = first.json()
    assert push["entered"] == reachable.height and push["exited"] == 0
    parts = wait_for(
        "the first push",
        lambda: [r for r in receiver.at("/push", 200) if r.json()["push_id"] == push["push_id"]],
    )
    assert all(r.signed for r in parts)
    assert parts[0].headers["Idempotency-Key"] == f"{push['push_id']}:1"
    doc = parts[0].json()
    assert doc["segment"] == {
        "segment_id": sid,
        "name": "Upsell",
        "version": 1,
        "purpose": "marketing",
        "legal_basis": "consent",
    }
    entered = [p for r in parts for p in r.json()["entered"]]
    assert {p["person_id"] for p in entered} == set(reachable["person_id"])
    allowed = {a for a, ps in settings.policy.attributes.items() if "marketing" in ps}
    for p in entered:
        assert set(p["attributes"]) - {"person_id"} <= allowed

    # One member withdraws marketing consent: the next push says they exited, nobody entered.
    leaver = str(reachable["person_id"][0])
    row = profiles.filter(pl.col("person_id") == leaver).to_dicts()[0]
    row.update(consent_marketing_granted=False, consent_marketing_source="test withdrawal")
    row["profile_version"] += 1
    new_version(served["lake"], row)
    version = served["lake"].version(PROFILES)
    wait_for(
        "the snapshot with the withdrawal",
        lambda: (
            call(served, "GET", f"/v1/segments/{sid}/preview", "marketing").json()[
                "snapshot_version"
            ]
            >= version
        ),
    )
    second = call(
        served, "POST", f"/v1/segments/{sid}/push", "marketing", {"channel": "sms_campaigns"}
    ).json()
    assert (second["entered"], second["exited"]) == (0, 1)
    got = wait_for(
        "the second push",
        lambda: [r for r in receiver.at("/push", 200) if r.json()["push_id"] == second["push_id"]],
    )
    assert got[0].json()["exited"] == [leaver] and got[0].json()["entered"] == []

    history = call(served, "GET", f"/v1/segments/{sid}/pushes", "marketing").json()
    assert [h["push_id"] for h in history] == [second["push_id"], push["push_id"]]
    assert all(h["delivery"] == "delivered" for h in history)

    # The regulator's question: on what basis did this customer receive the campaign?
    audit = call(served, "GET", f"/v1/audit/pushes?person={leaver}&segment={sid}", "steward")
    assert audit.status_code == 200, audit.text
    entered_row, exited_row = audit.json()
    assert entered_row["change"] == "entered" and entered_row["consent_granted"] is True
    assert entered_row["legal_basis"] == "consent" and entered_row["purpose"] == "marketing"
    assert entered_row["consent_since"] is not None and entered_row["rule"] == rule
    assert entered_row["delivery"] == "delivered" and entered_row["channel"] == "sms_campaigns"
    assert exited_row["change"] == "exited" and exited_row["consent_granted"] is False
    assert exited_row["consent_source"] == "test withdrawal"
    assert call(served, "GET", f"/v1/audit/pushes?person={leaver}", "marketing").status_code == 403

    _campaign_report_shows_what_the_push_relied_on(served, push["push_id"], rule, leaver, entered)


def _campaign_report_shows_what_the_push_relied_on(
    served: dict[str, Any],
    push_id: str,
    rule: dict[str, Any],
    leaver: str,
    entered: list[dict[str, Any]],
) -> None:
    """The campaign report of a push: every recipient, with the consent the push relied on
    (the leaver's later withdrawal does not rewrite it) and the attributes it sent."""
    url = f"/v1/audit/campaigns/{push_id}"
    assert call(served, "GET", url, "marketing").status_code == 403
    report = call(served, "GET", url, "steward:consent").json()
    assert report["segment"]["rule"] == rule and report["legal_basis"] == "consent"
    rows = {r["person_id"]: r for r in report["recipients"]}
    assert rows.keys() == {p["person_id"] for p in entered}
    assert rows[leaver]["consent_granted"] is True and rows[leaver]["change"] == "entered"
    for p in entered:
        assert set(rows[p["person_id"]]["attributes_sent"]) == set(p["attributes"]), p
    csv_text = call(served, "GET", url + "?format=csv", "steward:consent").text
    lines = csv_text.splitlines()
    assert len(lines) == 1 + len(entered) and lines[0].startswith("push_id,at,segment_id")
    assert any(line.split(",")[7] == leaver and ",True," in line for line in lines[1:])
    assert call(served, "GET", "/v1/audit/campaigns/push_nope", "steward").status_code == 404


def test_a_marketing_push_on_churn_risk_reaches_only_persons_who_may_be_profiled(
    served: dict[str, Any], receiver: Receiver
) -> None:
    """The reported leak: a marketing segment filtering on churn_risk (bound to profiling) was
    pushed to persons who had not consented to profiling; their scores chose who was contacted."""
    sid = create_segment(served, "Win-back", {"attr": "churn_risk", "op": ">=", "value": 0.2})
    profiles = served["lake"].read_polars(PROFILES)
    risky = profiles.filter(
        (pl.col("churn_risk") >= 0.2) & pl.col("consent_marketing_granted").fill_null(False)
    )
    allowed = risky.filter(may_use(served, "churn_risk"))
    assert 0 < allowed.height < risky.height  # some marketing-only persons would have leaked
    r = call(served, "POST", f"/v1/segments/{sid}/push", "marketing", {"channel": "sms_campaigns"})
    assert r.status_code == 202, r.text
    assert r.json()["entered"] == allowed.height
    parts = wait_for(
        "the push",
        lambda: [
            x for x in receiver.at("/push", 200) if x.json()["push_id"] == r.json()["push_id"]
        ],
    )
    sent = {m["person_id"] for part in parts for m in part.json()["entered"]}
    assert sent == set(allowed["person_id"])
    preview = call(served, "GET", f"/v1/segments/{sid}/preview", "marketing").json()
    assert (
        preview["members"]
        == profiles.filter((pl.col("churn_risk") >= 0.2) & may_use(served, "churn_risk")).height
    )


def test_events_arrive_at_least_once_in_order_per_person_despite_failures(
    served: dict[str, Any], receiver: Receiver
) -> None:
    path = "/flaky"
    receiver.fail_next[path] = 3  # seen but refused: the batch comes again
    _subscribe(served, "nba_engine", ["consent.changed", "churn_risk.crossed"], receiver.url + path)
    persons = _persons(served, "profiling", True, 4)
    unconsented = _persons(served, "profiling", False, 1)
    changes = [
        ("consent.changed", p, {"purpose": "marketing", "granted": i % 2 == 0})
        for i in range(3)
        for p in persons
    ]
    churn = [("churn_risk.crossed", p, {"direction": "up"}) for p in persons + unconsented]
    ids = _outbox(served, changes + churn)
    expected = ids[: len(changes) + len(persons)]  # not the unconsented person's churn event

    arrived = wait_for(
        "every event",
        lambda: (
            (e := _events_at(receiver, path)) and {x["event_id"] for x in e} >= set(expected) and e
        ),
    )
    assert all(r.signed for r in receiver.at(path))
    assert len(receiver.at(path, 500)) == 3 and len(arrived) > len(expected)  # duplicates
    unique: dict[str, dict[str, Any]] = {}
    for e in arrived:
        unique.setdefault(e["event_id"], e)
    time.sleep(0.5)  # nothing else comes
    assert set(unique) == set(expected), "withheld event delivered or events missing"
    for p in persons:
        mine = [e for e in _events_at(receiver, path) if e["person_id"] == p]
        firsts = list(dict.fromkeys(e["event_id"] for e in mine))
        assert firsts == [i for i in expected if f":{p}:" in i], "out of order for a person"
        seqs = [unique[i]["seq"] for i in firsts]
        assert seqs == sorted(seqs)


def test_dead_letters_are_parked_and_redelivered(
    served: dict[str, Any], receiver: Receiver
) -> None:
    path = "/down"
    receiver.down[path] = True
    sid = _subscribe(served, "contact_centre", ["profile.merged"], receiver.url + path)
    person = _persons(served, "service", True, 1)[0]
    (event_id,) = _outbox(served, [("profile.merged", person, {"into": "p-other"})])
    dead = wait_for(
        "the dead letter",
        lambda: call(
            served, "GET", f"/v1/subscriptions/{sid}/deliveries?status=dead", "contact_centre"
        ).json(),
    )
    assert dead[0]["message_key"] == event_id and dead[0]["attempts"] == 4
    assert "503" in dead[0]["last_error"]
    assert len(receiver.at(path)) == 4

    receiver.down[path] = False
    r = call(served, "POST", f"/v1/subscriptions/{sid}/redeliver", "contact_centre", {})
    assert r.json() == {"redelivered": 1}
    got = wait_for("the redelivery", lambda: receiver.at(path, 200))
    assert got[0].json()["events"][0]["event_id"] == event_id
    other = call(served, "POST", f"/v1/subscriptions/{sid}/redeliver", "mobile_app", {})
    assert other.status_code == 404  # another channel's subscription


def test_subscriptions_refuse_unknown_types_fields_and_wrong_audiences(
    served: dict[str, Any], receiver: Receiver
) -> None:
    def subscribe(key: str, types: list[str], filter_: dict[str, Any] | None = None) -> Any:
        body = {
            "event_types": types,
            "filter": filter_ or {},
            "url": receiver.url,
            "secret": SECRET,
        }
        return call(served, "POST", "/v1/subscriptions", key, body)

    bad = subscribe("nba_engine", ["profile.exploded"])
    assert bad.status_code == 422 and bad.json()["field"] == "event_types[0]"
    bad = subscribe("nba_engine", ["churn_risk.crossed"], {"iban": "x"})
    assert bad.status_code == 422 and bad.json()["field"] == "filter.iban"
    ops = subscribe("nba_engine", ["ops.schema_drift"])  # not for a channel's key
    assert ops.status_code == 403 and ops.json()["field"] == "event_types[0]"
    assert subscribe("steward", ["ops.schema_drift"], {"source": "billing"}).status_code == 201
    assert subscribe("marketing", ["churn_risk.crossed"]).status_code == 403
    # A source steward's subscription carries their source, as the SSE stream filters it.
    own = subscribe("steward:billing", ["ops.gate_held", "ops.schema_drift"])
    assert own.status_code == 201 and own.json()["filter"] == {"source": "billing"}
    other = subscribe("steward:billing", ["ops.gate_held"], {"source": ["billing", "crm"]})
    assert other.status_code == 403 and other.json()["field"] == "filter.source"


def test_the_stream_resumes_from_last_event_id_without_gaps(served: dict[str, Any]) -> None:
    person = _persons(served, "service", True, 1)[0]
    ids = _outbox(
        served, [("consent.changed", person, {"purpose": "marketing", "n": i}) for i in range(6)]
    )
    key = {"X-API-Key": served["keys"]["mobile_app"]}
    url = f"{served['server'].url}/v1/events/stream"

    def read(headers: dict[str, str], done: Callable[[list[Any]], bool]) -> list[Any]:
        """(seq, event) pairs from a fresh connection until `done` says enough."""
        got: list[tuple[int, dict[str, Any]]] = []
        with httpx.stream("GET", url, headers={**key, **headers}, timeout=30) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            seq = None
            for line in r.iter_lines():
                if line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("data: ") and seq is not None:
                    got.append((seq, json.loads(line[6:])))
                    if done(got):
                        break
        return got

    full = read({}, lambda got: {e["event_id"] for _, e in got} >= set(ids))
    cut = len(full) // 2
    resumed = read(
        {"Last-Event-ID": str(full[cut - 1][0])}, lambda got: len(got) == len(full) - cut
    )
    assert [s for s, _ in resumed] == [s for s, _ in full[cut:]], "gap or repeat after resume"
    assert all(e["event_type"] != "ops.schema_drift" for _, e in full)
    bad = served["client"].get(url, headers={**key, "Last-Event-ID": "yesterday"})
    assert bad.status_code == 422
    # A position past any SQL integer is refused up front, not a stream broken mid-way.
    too_far = str(2**63 + 32)
    assert served["client"].get(url, headers={**key, "Last-Event-ID": too_far}).status_code == 422
    assert served["client"].get(url, params={"since": too_far}, headers=key).status_code == 422


def test_segment_members_entering_and_exiting_are_events(
    served: dict[str, Any], receiver: Receiver
) -> None:
    path = "/segments"
    _subscribe(served, "nba_engine", ["segment.entered", "segment.exited"], receiver.url + path)
    rule = {
        "and": [
            {"attr": "value_segment", "op": "is_not_null"},
            {"attr": "churn_risk", "op": ">=", "value": 0.1},
        ]
    }
    sid = create_segment(served, "Retention", rule)
    profiles = served["lake"].read_polars(PROFILES)
    reachable = profiles.filter(
        pl.col("value_segment").is_not_null()
        & (pl.col("churn_risk") >= 0.1)
        & may_use(served, "churn_risk")
        & pl.col("consent_marketing_granted").fill_null(False)
    )
    assert reachable.height > 1

    def of_segment(kind: str) -> list[dict[str, Any]]:
        return [
            e
            for e in _events_at(receiver, path)
            if e["event_type"] == kind and e["payload"]["segment_id"] == sid
        ]

    entered = wait_for(
        "the entered events",
        lambda: (e := of_segment("segment.entered")) and len(e) >= reachable.height and e,
    )
    assert {e["person_id"] for e in entered} == set(reachable["person_id"])
    assert entered[0]["payload"]["purpose"] == "marketing"

    leaver = str(reachable["person_id"][-1])
    row = profiles.filter(pl.col("person_id") == leaver).to_dicts()[0]
    row.update(consent_marketing_granted=False)
    row["profile_version"] += 1
    new_version(served["lake"], row)
    exited = wait_for("the exit", lambda: of_segment("segment.exited"))
    assert [e["person_id"] for e in exited] == [leaver]  # told, although consent ended


def test_a_channel_without_an_http_endpoint_gets_its_push_as_files(
    served: dict[str, Any],
) -> None:
    sid = create_segment(served, "App banner", {"attr": "tariff_id", "op": "is_not_null"})
    push = call(served, "POST", f"/v1/segments/{sid}/push", "marketing", {"channel": "mobile_app"})
    assert push.status_code == 202, push.text
    folder = served["root"] / "pushes" / "mobile_app"
    files = wait_for(
        "the dropped parts", lambda: sorted(folder.glob(f"{push.json()['push_id']}_*.json"))
    )
    assert len(files) == push.json()["parts"]
    assert not list(folder.glob(".*.tmp"))  # written to a temporary name, then renamed
    entered = [p["person_id"] for f in files for p in json.loads(f.read_text())["entered"]]
    assert len(entered) == push.json()["entered"] > 0


def test_ops_alerts_reach_stewards_and_delivery_shows_in_metrics(
    served: dict[str, Any], receiver: Receiver
) -> None:
    path = "/stewards"
    sid = _subscribe(served, "steward", ["ops.schema_drift"], receiver.url + path)
    # as the promotion gate raises it when crm starts sending an unknown field
    (alert,) = Alerts(served["settings"].database_url).record(
        [
            {
                "source": "crm",
                "kind": "schema_drift",
                "subject": f"field_{uuid.uuid4().hex[:8]}",
                "steward": "crm-steward@example.com",
                "detail": {"message": "crm sends an unknown field"},
            }
        ],
        datetime.now(UTC),
    )
    got = wait_for("the alert", lambda: _events_at(receiver, path))
    assert [e["event_id"] for e in got] == [f"alert-{alert['alert_id']}"]
    assert got[0]["payload"]["source"] == "crm"
    metrics = served["client"].get("/metrics").text
    assert f'cdp_event_queue_messages{{queue="sub:{sid}",status="delivered"}} 1.0' in metrics
    assert f'cdp_event_queue_oldest_pending_seconds{{queue="sub:{sid}"}} 0.0' in metrics
    assert 'cdp_event_delivery_lag_seconds{quantile="0.99"}' in metrics


def test_sse_and_webhooks_carry_no_event_of_a_person_without_consent_for_its_purpose(
    served: dict[str, Any], receiver: Receiver
) -> None:
    """churn_risk.crossed discloses profiling: a channel holding profiling gets it for a person
    who consented to profiling, never for one who did not, on the SSE stream and on its webhook
    alike (the consented person's later event marks that both were past the refused one)."""
    allowed, refused = (_persons(served, "profiling", granted, 1)[0] for granted in (True, False))
    path = "/nba-consent"
    _subscribe(served, "nba_engine", ["churn_risk.crossed"], receiver.url + path)
    ids = _outbox(
        served,
        [
            ("churn_risk.crossed", allowed, {"direction": "up", "threshold": 0.5}),
            ("churn_risk.crossed", refused, {"direction": "up", "threshold": 0.5}),
            ("churn_risk.crossed", allowed, {"direction": "down", "threshold": 0.5}),
        ],
    )

    def past_the_marker() -> list[dict[str, Any]]:
        got = _events_at(receiver, path)
        return got if ids[2] in {e["event_id"] for e in got} else []

    hooked = wait_for("the webhook", past_the_marker)
    assert {e["person_id"] for e in hooked} == {allowed}
    seen: list[dict[str, Any]] = []
    url = f"{served['server'].url}/v1/events/stream"
    headers = {"X-API-Key": served["keys"]["nba_engine"]}
    with httpx.stream(
        "GET", url, params={"types": "churn_risk.crossed"}, headers=headers, timeout=30
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["event_id"] == ids[2]:
                    break
    assert ids[0] in {e["event_id"] for e in seen}
    assert refused not in {e["person_id"] for e in seen}


def test_an_open_event_stream_does_not_hold_the_server_at_shutdown(
    served: dict[str, Any], tmp_path: Path
) -> None:
    """SIGTERM with a client on /v1/events/stream: the server closes the stream after
    `api.shutdown_grace_s` (5 s by default) and exits cleanly, the client sees its stream end."""
    root = tmp_path / "stopping"
    shutil.copytree(served["root"] / "lake", root / "lake")
    key = KeyStore(settings_for(root).database_url).create("stream", "channel", "mobile_app")
    server = ServeProcess(root, {"CDP_EVENTS_DELIVER": "false"})
    url = f"{server.url}/v1/events/stream"
    opened = threading.Event()
    ended: list[float] = []

    def listen() -> None:
        with httpx.stream("GET", url, headers={"X-API-Key": key}, timeout=120) as r:
            assert r.status_code == 200
            opened.set()
            with contextlib.suppress(httpx.HTTPError):
                for _ in r.iter_lines():
                    pass
        ended.append(time.monotonic())

    client = threading.Thread(target=listen, daemon=True)
    client.start()
    try:
        assert opened.wait(30), "the stream did not open"
        asked = time.monotonic()
        assert server.stop(), "cdp serve did not stop cleanly"
        stopped = time.monotonic() - asked
    finally:
        server.stop()
    client.join(timeout=30)
    assert stopped < 5 + 10, f"shutdown took {stopped:.1f} s with a stream open"
    assert ended and ended[0] - asked < 5 + 10
