"""Every lake table, declared once: its name, layer, key, which stage writes it and what it holds.

Stages, the API, checks and the CLI take table names from here (never as strings of their own),
and nothing here imports an engine: a reader without a JVM can name any table. Per-source tables
(`bronze.<source>`, `silver.<domain>`) and reference tables (`ref.<name>`) are named by the
functions below from conf. Schemas live with the stage that writes each table (its columns
follow from conf: contracts, the profile, the policy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Settings, SourceContract


@dataclass(frozen=True)
class TableSpec:
    """A table of the lake: `layer.name`, its key (None: append-only rows), its writer, what it
    holds, and the column that tells how fresh it is (None: no time of its own)."""

    name: str
    key: str | None
    written_by: str
    holds: str
    event_time: str | None

    @property
    def layer(self) -> str:
        return self.name.partition(".")[0]


def bronze_table(source: str) -> str:
    """A source's raw lines, exactly once per landing line (`ingest`)."""
    return f"bronze.{source}"


def ingest_checkpoint(settings: Settings, source: str, kind: str = "files") -> Path:
    """Where the stream keeps a source's query state (offsets, files seen)."""
    folder = "ingest" if kind == "files" else f"ingest-{kind}"
    return settings.paths.checkpoint_root / folder / source


def refined_from(table: str, source: str) -> str:
    """The app transaction a silver-side table (silver, quarantine, drift, rejected) keeps for
    the bronze version of `source` it has refined up to."""
    return f"{table}<-{bronze_table(source)}"


def silver_table(contract: SourceContract) -> str:
    """A contract's validated, typed, deduplicated events (`ingest`), named by its domain."""
    return f"silver.{contract.domain}"


def ref_table(name: str) -> str:
    """A reference table loaded from its CSV file (`reference`)."""
    return f"ref.{name}"


QUARANTINE = "silver.quarantine"
DRIFT = "silver.schema_drift"
REJECTED = "silver.rejected_fields"
EVIDENCE = "silver.identity_edges"
DAILY = "silver.daily_usage"
FACTS = "silver.profile_facts"
LINKS = "gold.identity_links"
MAP = "gold.identity_map"
MERGES = "gold.person_merges"
ACCOUNTS = "gold.accounts"
PROFILES = "gold.profiles"
OUTBOX = "ops.outbox"

TABLES = {
    t.name: t
    for t in (
        TableSpec(
            QUARANTINE,
            None,
            "ingest",
            "lines refused by their contract, with the reason",
            "ingest_ts",
        ),
        TableSpec(
            DRIFT,
            None,
            "ingest",
            "fields a source sent that its contract does not know",
            "last_seen",
        ),
        TableSpec(
            REJECTED,
            None,
            "ingest",
            "fields dropped from accepted lines, with the reason",
            "ingest_ts",
        ),
        TableSpec(
            EVIDENCE, None, "identity", "identity evidence derived from silver rows", "ingest_ts"
        ),
        TableSpec(
            LINKS,
            "edge_key",
            "identity",
            "links between identifiers, status, reason",
            "first_ingest_ts",
        ),
        TableSpec(
            MAP, "node_key", "identity", "each identifier's person and account", "valid_from"
        ),
        TableSpec(
            MERGES, None, "identity", "merges, splits and suspicious links, with the link", "at"
        ),
        TableSpec(ACCOUNTS, "account_id", "identity", "accounts, holders, members and lines", None),
        TableSpec(DAILY, None, "gold", "per-identifier daily usage deltas", None),
        TableSpec(
            FACTS, None, "gold", "per-identifier latest facts (tariff, device, consent)", "ts"
        ),
        TableSpec(
            PROFILES,
            "person_id",
            "gold",
            "one profile per person: aggregates, scores",
            "last_event_ts",
        ),
        TableSpec(
            OUTBOX, None, "gold", "profile and identity change events, in order", "occurred_at"
        ),
    )
}
# The freshness column of per-source tables, by layer.
LAYER_EVENT_TIME = {"bronze": "ingest_ts", "silver": "event_ts"}


def event_time(table: str) -> str | None:
    """The column that tells how fresh `table` is (its newest value), if it has one."""
    spec = TABLES.get(table)
    return spec.event_time if spec else LAYER_EVENT_TIME.get(table.partition(".")[0])


def stream_appended(settings: Settings) -> set[str]:
    """The tables the ingest queries write with blind appends only: maintenance (compaction,
    retention deletes) may change them while the stream runs; the rest is written under the
    identity lock."""
    sources = settings.sources
    return {
        *(bronze_table(s) for s in sources),
        *(silver_table(settings.contract(s)) for s in sources),
        QUARANTINE,
        DRIFT,
        REJECTED,
    }


def every_table(settings: Settings) -> list[str]:
    """Every table the pipeline writes for this conf, in the order of the flow."""
    return [
        *(bronze_table(s) for s in settings.sources),
        *(silver_table(settings.contract(s)) for s in settings.sources),
        QUARANTINE,
        DRIFT,
        REJECTED,
        *(ref_table(t) for t in settings.reference.tables),
        EVIDENCE,
        LINKS,
        MAP,
        MERGES,
        ACCOUNTS,
        DAILY,
        FACTS,
        PROFILES,
        OUTBOX,
    ]
