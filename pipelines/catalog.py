"""Every lake table, declared once: its name, layer, key, which stage writes it and what it holds.

Stages, the API, checks and the CLI take table names from here (never as strings of their own),
and nothing here imports an engine: a reader without a JVM can name any table. Per-source tables
(`bronze.<source>`, `silver.<domain>`) and reference tables (`ref.<name>`) are named by the
functions below from conf. Schemas live with the stage that writes each table (its columns
follow from conf: contracts, the profile, the policy).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.config import SourceContract


@dataclass(frozen=True)
class TableSpec:
    """A table of the lake: `layer.name`, its key (None: append-only rows), its writer."""

    name: str
    key: str | None
    written_by: str
    holds: str

    @property
    def layer(self) -> str:
        return self.name.partition(".")[0]


def bronze_table(source: str) -> str:
    """A source's raw lines, exactly once per landing line (`ingest`)."""
    return f"bronze.{source}"


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
        TableSpec(QUARANTINE, None, "ingest", "lines refused by their contract, with the reason"),
        TableSpec(DRIFT, None, "ingest", "fields a source sent that its contract does not know"),
        TableSpec(REJECTED, None, "ingest", "fields dropped from accepted lines, with the reason"),
        TableSpec(EVIDENCE, None, "identity", "identity evidence derived from silver rows"),
        TableSpec(LINKS, "edge_key", "identity", "links between identifiers, status, reason"),
        TableSpec(MAP, "node_key", "identity", "each identifier's person and account"),
        TableSpec(MERGES, None, "identity", "merges, splits and suspicious links, with the link"),
        TableSpec(ACCOUNTS, "account_id", "identity", "accounts, holders, members and lines"),
        TableSpec(DAILY, None, "gold", "per-identifier daily usage deltas"),
        TableSpec(FACTS, None, "gold", "per-identifier latest facts (tariff, device, consent)"),
        TableSpec(PROFILES, "person_id", "gold", "one profile per person: aggregates, scores"),
        TableSpec(OUTBOX, None, "gold", "profile and identity change events, in order"),
    )
}
