"""The regulator's campaign report: for one push, the segment version and its rule, the channel,
the purpose and its legal basis, and per recipient the consent state the push used (recorded
at push time, so a withdrawal after the push does not rewrite it) and the attributes the
channel was sent (the push's audit records: names, never values). As JSON, CSV or a page."""

from __future__ import annotations

import csv
import html
import io
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from pipelines.activation.push import PushStore, push_members, pushes
from pipelines.activation.segment_store import SegmentStore
from pipelines.ops.audit import audit_disclosures, audit_records
from pipelines.ops.pages import cell, page, table
from pipelines.ops.store import utc

RECIPIENT_COLUMNS = (
    "person_id",
    "change",
    "consent_granted",
    "consent_since",
    "consent_legal_basis",
    "consent_source",
    "attributes_sent",
)
AUDIT_WINDOW = timedelta(minutes=5)  # a push's records are written while it renders


def campaign_report(
    store: PushStore, segments: SegmentStore, push_id: str
) -> dict[str, Any] | None:
    """The push `push_id` with its recipients (None: no such push)."""
    p, m = pushes.c, push_members.c
    with store.engine.connect() as conn:
        push = conn.execute(select(pushes).where(p.push_id == push_id)).mappings().first()
        if push is None:
            return None
        members = conn.execute(
            select(push_members).where(m.push_id == push_id).order_by(m.change, m.person_id)
        ).mappings()
        recipients = [dict(r) for r in members]
        at = utc(push["at"])
        a, d = audit_records.c, audit_disclosures.c
        sent = conn.execute(
            select(a.person_id, d.served)
            .join_from(audit_records, audit_disclosures, a.disclosure_id == d.disclosure_id)
            .where(
                (a.kind == "segment_push")
                & (a.channel == push["channel"])
                & (a.snapshot_version == push["snapshot_version"])
                & (a.at >= at - AUDIT_WINDOW)
                & (a.at <= at)
            )
        ).all()
    served = {person: list(names) for person, names in sent}
    segment = segments.get(push["segment_id"], push["segment_version"])
    for r in recipients:
        r.pop("push_id")
        if r["consent_since"] is not None:
            r["consent_since"] = utc(r["consent_since"]).isoformat()
        # exited members are sent by id only
        r["attributes_sent"] = served.get(r["person_id"], []) if r["change"] == "entered" else []
    return {
        "push_id": push_id,
        "at": at.isoformat(),
        "segment": {
            "segment_id": push["segment_id"],
            "name": segment.name if segment else None,
            "version": push["segment_version"],
            "rule": segment.rule if segment else None,
        },
        "channel": push["channel"],
        "purpose": push["purpose"],
        "legal_basis": push["legal_basis"],
        "key_id": push["key_id"],
        "snapshot_version": push["snapshot_version"],
        "delivery": store.delivery_of(push["channel"], push_id),
        "recipients": recipients,
    }


def report_csv(report: dict[str, Any]) -> str:
    """One row per recipient, with the push's facts on every row (a spreadsheet keeps them)."""
    out = io.StringIO()
    head = ("push_id", "at", "segment_id", "segment_version", "channel", "purpose", "legal_basis")
    writer = csv.writer(out)
    writer.writerow([*head, *RECIPIENT_COLUMNS])
    seg = report["segment"]
    facts = [
        report["push_id"],
        report["at"],
        seg["segment_id"],
        seg["version"],
        report["channel"],
        report["purpose"],
        report["legal_basis"],
    ]
    for r in report["recipients"]:
        cells = [r[c] for c in RECIPIENT_COLUMNS[:-1]] + ["; ".join(r["attributes_sent"])]
        writer.writerow([*facts, *("" if v is None else v for v in cells)])
    return out.getvalue()


def report_html(report: dict[str, Any]) -> str:
    """The report as a page: the push's facts, the rule, and the recipients' table."""
    seg = report["segment"]
    facts = {
        "Push": report["push_id"],
        "Sent at": report["at"],
        "Segment": f"{seg['name']} ({seg['segment_id']}), version {seg['version']}",
        "Channel": report["channel"],
        "Purpose": report["purpose"],
        "Legal basis": report["legal_basis"],
        "Requested by key": report["key_id"],
        "Profiles as of gold version": report["snapshot_version"],
        "Delivery": report["delivery"],
    }
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{cell(v)}</td></tr>" for k, v in facts.items()
    )
    body = (
        f"<h1>Campaign report</h1><table>{rows}</table>"
        f"<h2>Rule</h2><pre>{html.escape(json.dumps(seg['rule'], indent=2))}</pre>"
        f"<h2>Recipients ({len(report['recipients'])})</h2>"
        + table(report["recipients"], RECIPIENT_COLUMNS)
    )
    return page(f"Campaign report {report['push_id']}", body)
