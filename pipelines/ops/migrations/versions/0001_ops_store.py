"""The ops store as it stood before migrations: every table, each created only if missing.

A database made by earlier versions (which created tables as each store first opened it, so
possibly only some of them) is adopted by this revision: the tables it has are kept as they are.

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    for name, create in TABLES.items():
        if name not in existing:
            create()


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)


def _alerts() -> None:
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.String(length=40), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("steward", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_alerts")),
    )
    op.create_index(op.f("ix_alerts_raised_at"), "alerts", ["raised_at"])
    op.create_index(op.f("ix_alerts_source"), "alerts", ["source"])


def _api_keys() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
    )


def _audit_disclosures() -> None:
    op.create_table(
        "audit_disclosures",
        sa.Column("disclosure_id", sa.String(length=40), nullable=False),
        sa.Column("purposes", sa.JSON(), nullable=False),
        sa.Column("legal_basis", sa.JSON(), nullable=False),
        sa.Column("served", sa.JSON(), nullable=False),
        sa.Column("withheld", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("disclosure_id", name=op.f("pk_audit_disclosures")),
    )


def _audit_records() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=True),
        sa.Column("person_id", sa.String(length=40), nullable=True),
        sa.Column("disclosure_id", sa.String(length=40), nullable=False),
        sa.Column("profile_version", sa.BigInteger(), nullable=True),
        sa.Column("snapshot_version", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
    )
    op.create_index(op.f("ix_audit_records_at"), "audit_records", ["at"])
    op.create_index(op.f("ix_audit_records_person_id"), "audit_records", ["person_id"])


def _channel_members() -> None:
    op.create_table(
        "channel_members",
        sa.Column("segment_id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("person_id", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint(
            "segment_id", "channel", "person_id", name=op.f("pk_channel_members")
        ),
    )


def _deliveries() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("queue", sa.String(length=120), nullable=False),
        sa.Column("message_key", sa.String(length=250), nullable=False),
        sa.Column("person_id", sa.String(length=40), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("queue", "message_key", name=op.f("uq_deliveries_queue_message_key")),
    )
    op.create_index("deliveries_queue_status", "deliveries", ["queue", "status", "id"])


def _event_cursors() -> None:
    op.create_table(
        "event_cursors",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_event_cursors")),
    )


def _event_log() -> None:
    op.create_table(
        "event_log",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=250), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("person_id", sa.String(length=40), nullable=True),
        sa.Column("related_person_id", sa.String(length=40), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_event_log")),
        sa.UniqueConstraint("event_id", name=op.f("uq_event_log_event_id")),
    )
    op.create_index("event_log_type_seq", "event_log", ["event_type", "seq"])
    op.create_index(op.f("ix_event_log_person_id"), "event_log", ["person_id"])


def _segment_members() -> None:
    op.create_table(
        "segment_members",
        sa.Column("segment_id", sa.String(length=40), nullable=False),
        sa.Column("person_id", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "person_id", name=op.f("pk_segment_members")),
    )


def _segment_push_members() -> None:
    op.create_table(
        "segment_push_members",
        sa.Column("push_id", sa.String(length=40), nullable=False),
        sa.Column("person_id", sa.String(length=40), nullable=False),
        sa.Column("change", sa.String(length=8), nullable=False),
        sa.Column("consent_granted", sa.Boolean(), nullable=True),
        sa.Column("consent_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consent_legal_basis", sa.String(length=40), nullable=True),
        sa.Column("consent_source", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("push_id", "person_id", name=op.f("pk_segment_push_members")),
    )
    op.create_index(
        op.f("ix_segment_push_members_person_id"), "segment_push_members", ["person_id"]
    )


def _segment_pushes() -> None:
    op.create_table(
        "segment_pushes",
        sa.Column("push_id", sa.String(length=40), nullable=False),
        sa.Column("segment_id", sa.String(length=40), nullable=False),
        sa.Column("segment_version", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("legal_basis", sa.String(length=40), nullable=False),
        sa.Column("snapshot_version", sa.BigInteger(), nullable=True),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("entered", sa.Integer(), nullable=False),
        sa.Column("exited", sa.Integer(), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("push_id", name=op.f("pk_segment_pushes")),
    )
    op.create_index(op.f("ix_segment_pushes_segment_id"), "segment_pushes", ["segment_id"])


def _segment_versions() -> None:
    op.create_table(
        "segment_versions",
        sa.Column("segment_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rule", sa.JSON(), nullable=False),
        sa.Column("author", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "version", name=op.f("pk_segment_versions")),
    )


def _segments() -> None:
    op.create_table(
        "segments",
        sa.Column("segment_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", name=op.f("pk_segments")),
    )


def _subscriptions() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column("owner", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=100), nullable=True),
        sa.Column("event_types", sa.JSON(), nullable=False),
        sa.Column("filter", sa.JSON(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", name=op.f("pk_subscriptions")),
    )


TABLES = {
    "alerts": _alerts,
    "api_keys": _api_keys,
    "audit_disclosures": _audit_disclosures,
    "audit_records": _audit_records,
    "channel_members": _channel_members,
    "deliveries": _deliveries,
    "event_cursors": _event_cursors,
    "event_log": _event_log,
    "segment_members": _segment_members,
    "segment_push_members": _segment_push_members,
    "segment_pushes": _segment_pushes,
    "segment_versions": _segment_versions,
    "segments": _segments,
    "subscriptions": _subscriptions,
}
