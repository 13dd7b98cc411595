"""The data-quality suites, one per table, written in code from the contracts and the policy.

Each expectation carries `meta`: `blocking` (a failure stops promotion to gold) and `why` (one
line a steward reads in the run and in the data docs). Silver suites validate the rows waiting
to be promoted; the others validate the table as it stands (see `expectations.frames`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import great_expectations.expectations as gxe
from great_expectations.expectations.expectation import Expectation

from pipelines.config import IDENTIFIER_TYPES, Settings, SourceContract
from pipelines.ingest.silver import EMAIL
from pipelines.lakehouse.catalog import (
    ACCOUNTS,
    DAILY,
    DRIFT,
    EVIDENCE,
    FACTS,
    LINKS,
    MAP,
    MERGES,
    OUTBOX,
    PROFILES,
    QUARANTINE,
    bronze_table,
    silver_table,
)

# Value ranges a silver column must keep whatever its source: a field is valid by its contract
# (type, presence) and plausible by these. A negative byte count is a broken feed, not a customer.
RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "bytes_up": (0, None, "byte counters never go below zero"),
    "bytes_down": (0, None, "byte counters never go below zero"),
    "duration_s": (0, 7 * 24 * 3600, "a data session lasts between 0 s and a week"),
    "amount": (0, 10_000_000, "a payment is positive and below 10 million"),
    "balance_after": (-1_000_000, 100_000_000, "a balance stays within the sane range"),
}
SOURCE_HEALTH = "quality.source_health"  # one row per source: landed, quarantined, rate, limit
MAP_PERSONS = "quality.map_persons"  # persons of the identity map: has a profile or not


@dataclass(frozen=True)
class Suite:
    """The expectations of one table, and the columns they read (all a frame needs)."""

    table: str
    expectations: list[Expectation]
    description: str
    # A column naming each row's subject (the source of a source-health row): a failure then
    # says which subjects broke it, so the gate holds only those.
    row_key: str | None = None

    @property
    def columns(self) -> list[str]:
        cols: list[str] = [self.row_key] if self.row_key else []
        for e in self.expectations:
            for attr in ("column", "column_A", "column_B"):
                c = getattr(e, attr, None)
                if c and c not in cols:
                    cols.append(c)
            for c in getattr(e, "column_list", None) or []:
                if c not in cols:
                    cols.append(c)
        return cols


def _meta(why: str, blocking: bool) -> dict[str, object]:
    return {"blocking": blocking, "why": why}


def not_null(column: str, why: str, blocking: bool = True) -> Expectation:
    return gxe.ExpectColumnValuesToNotBeNull(column=column, meta=_meta(why, blocking))


def unique(column: str, why: str, blocking: bool = True) -> Expectation:
    return gxe.ExpectColumnValuesToBeUnique(column=column, meta=_meta(why, blocking))


def in_set(column: str, values: list[Any], why: str, blocking: bool = True) -> Expectation:
    return gxe.ExpectColumnValuesToBeInSet(
        column=column, value_set=sorted(values), meta=_meta(why, blocking)
    )


def between(
    column: str, low: float | None, high: float | None, why: str, blocking: bool = True
) -> Expectation:
    return gxe.ExpectColumnValuesToBeBetween(
        column=column, min_value=low, max_value=high, meta=_meta(why, blocking)
    )


def matches(column: str, regex: str, why: str, blocking: bool = True) -> Expectation:
    return gxe.ExpectColumnValuesToMatchRegex(column=column, regex=regex, meta=_meta(why, blocking))


def msisdn_regex(settings: Settings) -> str:
    c = settings.identity.country
    return rf"^{c.calling_code}\d{{{c.national_number_length}}}$"


def bronze_suite(contract: SourceContract) -> Suite:
    table = bronze_table(contract.source)
    return Suite(
        table,
        [
            not_null("raw_line", "bronze keeps every landed line, broken ones too", False),
            not_null("ingest_ts", "every line records when it was ingested", False),
            not_null("file_path", "every line names the landing file it came from", False),
            in_set("source", [contract.source], "a source's bronze holds only its lines", False),
        ],
        f"Raw lines of {contract.source} as landed ({contract.description})",
    )


def silver_suite(contract: SourceContract, settings: Settings) -> Suite:
    """Keys, allowed types and versions, identifier formats and value ranges of one source."""
    fields = contract.silver_fields()
    types = sorted({t for v in contract.versions for t in v.event_types})
    versions = [v.version for v in contract.versions]
    exps: list[Expectation] = [
        not_null("event_id", "an event without an id cannot be deduplicated or traced"),
        unique("event_id", "silver holds each event once (duplicates are quarantined)"),
        not_null("event_ts", "profiles are built in event time"),
        in_set("event_type", types, "only the event types the contract lists"),
        in_set("schema_version", versions, "only the contract's schema versions"),
    ]
    for name, wires in contract.silver_columns().items():
        spec = fields[wires[0]]
        if spec.type == "msisdn":
            exps.append(
                matches(name, msisdn_regex(settings), "MSISDNs are normalised to E.164 digits")
            )
        elif spec.type == "email":
            exps.append(matches(name, EMAIL, "emails are well formed", blocking=False))
        if name in RANGES:
            low, high, why = RANGES[name]
            exps.append(between(name, low, high, why))
    return Suite(
        silver_table(contract),
        exps,
        f"Validated {contract.source} events waiting for promotion to gold "
        f"(steward: {contract.steward.name})",
    )


def quarantine_suite(settings: Settings) -> Suite:
    return Suite(
        QUARANTINE,
        [
            not_null("reason_code", "every quarantined line says why", False),
            in_set("source", settings.sources, "quarantine rows come from known sources", False),
            not_null("raw_line", "the line is kept as it arrived, for replay", False),
        ],
        "Lines refused by silver validation, with the reason",
    )


def source_health_suite() -> Suite:
    return Suite(
        SOURCE_HEALTH,
        [
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                column_A="max_rate",
                column_B="quarantine_rate",
                or_equal=True,
                meta=_meta("a source quarantining more than its SLA is broken upstream", True),
            )
        ],
        "Quarantine rate per source over the last day, against conf/sla.yaml",
        row_key="source",
    )


def identity_map_suite() -> Suite:
    return Suite(
        MAP,
        [
            not_null("person_id", "every current identifier belongs to a person"),
            in_set("id_type", list(IDENTIFIER_TYPES), "only known identifier types"),
            gxe.ExpectCompoundColumnsToBeUnique(
                column_list=["id_type", "id_value"],
                meta=_meta("an identifier has one current owner", True),
            ),
        ],
        "Current identifier tenures and their person (valid_to is null)",
    )


def map_persons_suite() -> Suite:
    return Suite(
        MAP_PERSONS,
        [in_set("has_profile", [True], "every person in the identity map has a profile")],
        "Persons with a current identifier, and whether gold has their profile",
    )


def profiles_suite(settings: Settings, tariffs: list[str]) -> Suite:
    exps: list[Expectation] = [
        not_null("person_id", "the profile key"),
        unique("person_id", "one profile per person"),
        between("churn_risk", 0, 1, "churn risk is a probability"),
        between("balance_total", -1_000_000, 100_000_000, "a balance stays within the sane range"),
        matches("primary_msisdn", msisdn_regex(settings), "MSISDNs are E.164 digits", False),
    ]
    for purpose in settings.policy.purposes:
        exps.append(
            not_null(
                f"consent_{purpose}_granted",
                f"the consent state for {purpose} is known for every person (default deny)",
            )
        )
    exps.append(in_set("tariff_id", tariffs, "every profile's tariff exists in ref.tariffs", False))
    return Suite(PROFILES, exps, "One profile per person, as served by the API")


def tariffs_suite() -> Suite:
    return Suite(
        "ref.tariffs",
        [
            not_null("tariff_id", "the tariff key"),
            unique("tariff_id", "one row per tariff"),
            between("monthly_fee", 0, None, "fees are not negative"),
        ],
        "The tariff catalogue",
    )


def catalogue_suite(table: str, key: str) -> Suite:
    return Suite(
        table,
        [not_null(key, "the catalogue key", False), unique(key, "one row per key", False)],
        f"Reference catalogue {table}",
    )


def drift_suite(settings: Settings) -> Suite:
    return Suite(
        DRIFT,
        [
            not_null("field", "a drift row names the unknown field", False),
            between("events", 1, None, "a drift row counts the events that carried it", False),
            in_set("source", settings.sources, "drift rows come from known sources", False),
        ],
        "Fields sources sent that their contract does not list",
    )


def evidence_suite() -> Suite:
    types = list(IDENTIFIER_TYPES)
    return Suite(
        EVIDENCE,
        [
            in_set(
                "kind", ["merge", "member", "opens", "closes"], "known kinds of evidence", False
            ),
            in_set("a_type", types, "evidence links known identifier types", False),
            not_null("a_value", "evidence names its identifier", False),
            not_null("event_id", "evidence points at the event that carried it", False),
        ],
        "Identity evidence: identifiers seen together in events",
    )


def links_suite() -> Suite:
    return Suite(
        LINKS,
        [
            in_set("status", ["accepted", "refused", "member"], "a link is decided", False),
            not_null("rule", "every link names the rule that made it", False),
            not_null("edge_key", "the link's key", False),
        ],
        "Identity links with the rule and the decision",
    )


def merges_suite() -> Suite:
    return Suite(
        MERGES,
        [
            in_set("change", ["merge", "split"], "merges and splits only", False),
            not_null("from_person_id", "a change names the person it came from", False),
            not_null("to_person_id", "a change names the person it went to", False),
        ],
        "Person merges and splits",
    )


def accounts_suite() -> Suite:
    return Suite(
        ACCOUNTS,
        [
            not_null("account_id", "the account key", False),
            unique("account_id", "one row per account", False),
            in_set(
                "account_type", ["individual", "family", "corporate"], "known account types", False
            ),
        ],
        "Accounts with holder, members and lines",
    )


def daily_usage_suite() -> Suite:
    return Suite(
        DAILY,
        [
            in_set("id_type", list(IDENTIFIER_TYPES), "usage is kept per known identifier", False),
            not_null("day", "usage is per day", False),
            between("data_bytes", 0, None, "byte counters never go below zero", False),
            between("events", 0, None, "counts are not negative", False),
        ],
        "Usage per identifier and day",
    )


def facts_suite() -> Suite:
    return Suite(
        FACTS,
        [
            not_null("fact_key", "the fact's key", False),
            unique("fact_key", "one latest value per fact", False),
            not_null("ts", "a fact has the time it became true", False),
        ],
        "Latest facts per identifier",
    )


def outbox_suite() -> Suite:
    return Suite(
        OUTBOX,
        [
            not_null("event_id", "delivery is idempotent on the event id", False),
            unique("event_id", "each change event once", False),
            not_null("event_type", "subscribers filter on the event type", False),
        ],
        "Change and ops events waiting for delivery",
    )


def all_suites(settings: Settings, tariffs: list[str]) -> dict[str, Suite]:
    """Every suite by table name."""
    suites = [
        *(bronze_suite(settings.contract(s)) for s in settings.sources),
        *(silver_suite(settings.contract(s), settings) for s in settings.sources),
        quarantine_suite(settings),
        source_health_suite(),
        drift_suite(settings),
        evidence_suite(),
        daily_usage_suite(),
        facts_suite(),
        links_suite(),
        merges_suite(),
        accounts_suite(),
        outbox_suite(),
        identity_map_suite(),
        map_persons_suite(),
        profiles_suite(settings, tariffs),
        tariffs_suite(),
        catalogue_suite("ref.products", "product_id"),
        catalogue_suite("ref.segments", "segment_id"),
    ]
    return {s.table: s for s in suites}
