"""Typed configuration: the one place that reads `conf/*.yaml` and the `CDP_*` environment.

Everything else receives a `Settings` object. A broken file fails at start-up with a `ConfigError`
that names the file, the key and what is wrong.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONF_DIR = PROJECT_ROOT / "conf"
RATE = r"^[1-9][0-9]*/(second|minute|hour)$"  # a rate limit: 100/second

# Envelope carried by every event (DESIGN.md, "Sources"); contracts describe only the payload.
ENVELOPE_FIELDS = ("event_id", "source", "event_type", "event_ts", "schema_version")


M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A configuration file is missing, unreadable or invalid; the message says where and why."""


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- engine and paths


class EngineCfg(Model):
    """Spark and micro-batch settings."""

    spark_master: str = "local[*]"  # local[N], or spark://host:7077 for a standalone cluster
    shuffle_partitions: int = Field(4, ge=1)  # Spark shuffle partitions (a few per core)
    driver_memory: str = "4g"  # the Spark driver JVM heap
    ui_enabled: bool = False  # Spark UI on port 4040 (jobs, stages, REST API)
    trigger_interval_s: float = Field(2.0, gt=0)  # `cdp stream`: seconds between micro-batches
    max_files_per_trigger: int | None = Field(None, ge=1)  # landing files per micro-batch
    # How many sources' micro-batches may run their Spark pass at the same time.
    source_passes_at_once: int = Field(1, ge=1)
    # Events stamped further than this beyond their ingest time are quarantined as "future".
    max_future_skew_minutes: int = Field(60, ge=0)
    # A line (a Kafka message) longer than this is quarantined as "oversized", not parsed.
    max_line_bytes: int = Field(1_048_576, ge=1024)
    # `cdp stream` serves Prometheus metrics on this port (off when unset; CDP_STREAM_METRICS_PORT)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"  # the address they are served on


class KafkaCfg(Model):
    """The Kafka (or Kafka-compatible) cluster the sources publish to: one topic per source.
    Secrets never sit in conf: the SASL password and the key's passphrase are read from the
    environment variables named here."""

    bootstrap_servers: str = "127.0.0.1:9092"  # host:port,host:port
    topic_prefix: str = Field("cdp.", pattern=r"^[A-Za-z0-9._-]*$")  # topic = prefix + source
    # `cdp kafka init`: partitions and replication of a new topic, and its message size limit
    partitions: int = Field(12, ge=1)
    replication_factor: int = Field(1, ge=1)  # copies of each partition (3 in production)
    min_insync_replicas: int = Field(1, ge=1)  # copies that must acknowledge a write (acks=all)
    # how long a topic keeps messages (a replay reaches back this far)
    retention_hours: int = Field(168, ge=1)
    max_message_bytes: int = Field(1_048_576, ge=1024)  # largest message a topic accepts
    # the stream: where a new checkpoint starts, and at most how many messages per micro-batch
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    # messages per micro-batch and source (null: all new ones)
    max_offsets_per_trigger: int | None = Field(None, ge=1)
    # the collector: how long a batch may wait for the brokers' acknowledgement before a 503
    delivery_timeout_s: float = Field(30.0, gt=0)
    # how clients talk to the brokers (docs/kafka.md)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # SASL_*: how the user authenticates
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None  # SASL_*: the user (its password: sasl_password_env)
    # the environment variable that holds the SASL password
    sasl_password_env: str = "CDP_KAFKA_SASL_PASSWORD"
    ssl_ca_location: Path | None = None  # PEM: the brokers' CA
    ssl_certificate_location: Path | None = None  # PEM: this client's certificate (mutual TLS)
    ssl_key_location: Path | None = None  # PEM: its private key
    # the environment variable that holds the key's passphrase
    ssl_key_password_env: str = "CDP_KAFKA_SSL_KEY_PASSWORD"

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaCfg:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism and "
                "sasl_username (the password comes from the variable named by sasl_password_env)"
            )
        return self

    def topic(self, source: str) -> str:
        """The topic a source publishes to."""
        return f"{self.topic_prefix}{source}"


class SourceCfg(Model):
    """Where events come in: landing files only (the embedded default), or Kafka topics as
    well (the landing folder is still read beside them, for backfills)."""

    kind: Literal["files", "kafka"] = "files"  # kafka: topics too (docs/kafka.md)
    kafka: KafkaCfg = KafkaCfg()


class PathsCfg(Model):
    """Where the lake, the landing zone and the streaming checkpoints live."""

    lake_root: Path  # the Delta tables (relative paths: from the project folder)
    landing_root: Path  # landing/<source>/*.jsonl, and reference/ files
    checkpoint_root: Path  # streaming checkpoints and stage locks
    truth_root: Path  # the synthetic operator's ground truth (tests, benchmarks)


# ---------------------------------------------------------------- contracts

FieldType = Literal[
    "string",
    "integer",
    "decimal",
    "double",
    "boolean",
    "timestamp",
    "date",
    "msisdn",
    "iccid",
    "email",
    "enum",
]


class FieldSpec(Model):
    """One payload field of an event type: its type and whether it must be present."""

    # string, integer, decimal, double, boolean, timestamp, date, msisdn, iccid, email, enum
    type: FieldType
    required: bool = False  # an event without it is quarantined (missing_field)
    values: list[str] | None = None  # for enum
    precision: int = Field(18, ge=1, le=38)  # for decimal
    scale: int = Field(2, ge=0, le=18)  # for decimal
    description: str = ""  # what the field holds
    # A field renamed in a new version keeps filling the old silver column: `balance` in v2
    # with `silver_column: balance_after` lands where v1's `balance_after` does.
    silver_column: str | None = None

    @model_validator(mode="after")
    def _enum_has_values(self) -> FieldSpec:
        if self.type == "enum" and not self.values:
            raise ValueError("an enum field needs a non-empty 'values' list")
        if self.type != "enum" and self.values is not None:
            raise ValueError("'values' is only allowed on enum fields")
        return self

    def storage_type(self) -> str:
        """The typed column this field becomes in silver (Spark SQL type name)."""
        return {
            "integer": "bigint",
            "decimal": f"decimal({self.precision},{self.scale})",
            "double": "double",
            "boolean": "boolean",
            "timestamp": "timestamp",
            "date": "date",
        }.get(self.type, "string")


class EventTypeSpec(Model):
    description: str = ""  # what the event means
    fields: dict[str, FieldSpec]  # payload field -> type (the envelope fields are implicit)


class ContractVersion(Model):
    """One schema version of a source's events; several may be active during a migration."""

    version: int = Field(ge=1)  # the schema_version events carry
    # active, or deprecated (still accepted, flagged)
    status: Literal["active", "deprecated"] = "active"
    event_types: dict[str, EventTypeSpec]  # event type -> its fields


class Steward(Model):
    name: str  # who answers for the source's data
    email: str  # where their alerts go


class SourceContract(Model):
    """What a valid event of one streaming source is (the only place that says so)."""

    source: str  # the source's name (landing/<source>/, topic <prefix><source>)
    domain: str  # the business domain it belongs to (billing, crm, network, app)
    description: str = ""  # what the source sends
    steward: Steward  # who answers for it
    consumers: list[str]  # who uses its data (shown to its steward)
    # its schema versions (several may be active during a migration)
    versions: list[ContractVersion] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> SourceContract:
        seen: dict[str, str] = {}
        for v in self.versions:
            for etype, spec in v.event_types.items():
                for name, field in spec.fields.items():
                    if name in ENVELOPE_FIELDS:
                        raise ValueError(
                            f"v{v.version}.{etype}.{name}: envelope fields are implicit"
                        )
                    st = field.storage_type()
                    column = field.silver_column or name
                    if seen.setdefault(column, st) != st:
                        raise ValueError(
                            f"v{v.version}.{etype}.{name}: type {st} conflicts with "
                            f"{seen[column]} of silver column {column} elsewhere in this contract"
                        )
        versions = [v.version for v in self.versions]
        if len(set(versions)) != len(versions):
            raise ValueError(f"duplicate version numbers {versions}")
        return self

    def active_versions(self) -> list[ContractVersion]:
        return [v for v in self.versions if v.status == "active"]

    def silver_columns(self) -> dict[str, list[str]]:
        """Each silver column and the payload fields (of any version) that fill it."""
        out: dict[str, list[str]] = {}
        for name, spec in self.silver_fields().items():
            wires = out.setdefault(spec.silver_column or name, [])
            if name not in wires:
                wires.append(name)
        return out

    def silver_fields(self) -> dict[str, FieldSpec]:
        """Union of payload fields (names as sent) over every version and event type, in
        first-seen order."""
        out: dict[str, FieldSpec] = {}
        for v in self.versions:
            for spec in v.event_types.values():
                for name, field in spec.fields.items():
                    out.setdefault(name, field)
        return out

    @property
    def latest_version(self) -> int:
        return max(v.version for v in self.versions)


class RefColumn(Model):
    # string, integer, decimal, double, boolean or date
    type: Literal["string", "integer", "decimal", "double", "boolean", "date"]
    required: bool = True  # a row without it fails the load
    precision: int = 18  # for decimal
    scale: int = 2  # for decimal


class RefTableSpec(Model):
    file: str  # the file under landing/reference/
    key: str  # the column that identifies a row (a duplicate fails the load)
    description: str = ""  # what the table holds
    columns: dict[str, RefColumn]  # column -> type


class ReferenceContract(Model):
    """Batch reference files (tariffs, products, segments) and their columns."""

    steward: Steward  # who answers for the reference files
    consumers: list[str]  # who uses them
    tables: dict[str, RefTableSpec]  # table name -> its file and columns


# ---------------------------------------------------------------- identity (junk values so far)


class JunkCfg(Model):
    """Placeholder identifiers sources send instead of a real value."""

    # identifier type -> exact values (after normalising) that are placeholders
    values: dict[str, list[str]] = Field(default_factory=dict)
    # identifier type -> regular expressions of placeholder values
    patterns: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("patterns")
    @classmethod
    def _compile(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for id_type, pats in v.items():
            for p in pats:
                try:
                    re.compile(p)
                except re.error as exc:
                    raise ValueError(f"{id_type}: bad regular expression {p!r}: {exc}") from exc
        return v


class CountryCfg(Model):
    """Numbering plan used to normalise MSISDNs to E.164 digits."""

    name: str = "Uzbekistan"  # the operator's country (shown only)
    # country calling code, digits (998)
    calling_code: str = Field("998", pattern=r"^[1-9]\d{0,2}$")
    national_number_length: int = 9  # digits of a national number after the calling code
    # national prefixes of mobile numbers (others are not lines)
    mobile_prefixes: list[str] = Field(default_factory=lambda: ["90", "91", "93", "94", "97", "99"])


IDENTIFIER_TYPES = ("msisdn", "iccid", "account_id", "app_user_id", "email", "passport")
IdentifierType = Literal["msisdn", "iccid", "account_id", "app_user_id", "email", "passport"]


class LinkRule(Model):
    """Which event links which two identifiers, and whether that link merges people.

    `merge` joins the two identifiers into one person; `member` only relates a line to an
    account (family and corporate accounts never merge their lines' users). Lower tiers are
    stronger evidence and are applied first, so a weak link cannot pre-empt a strong one.
    """

    source: str  # the source whose events carry the link
    event_type: str  # its event type
    link: tuple[str, str]  # two event fields; their identifier types come from `fields`
    # merge: one person; member: a line of an account, never merged
    kind: Literal["merge", "member"] = "merge"
    tier: int = Field(1, ge=1, le=9)  # strength: lower tiers are applied first
    when: dict[str, list[str]] = Field(default_factory=dict)  # field -> allowed values


class TenureEvent(Model):
    """An event that opens or closes a tenure of the identifier in `field`."""

    source: str  # the source of the event
    event_type: str  # its event type
    field: str  # the event field holding the identifier


class TenureCfg(Model):
    opens: list[TenureEvent]  # events that start a tenure (activation, port-in, SIM change...)
    closes: list[TenureEvent]  # events that end one (deactivation, port-out...)


class GuardrailCfg(Model):
    """Limits a merge may not break; a link that would break one is refused and reported."""

    # identifier type -> most of them one person may hold
    max_per_person: dict[IdentifierType, int] = Field(default_factory=dict)
    max_component_size: int = Field(200, ge=2)  # most identifiers a merge may put together
    # Account types whose lines belong to different people: two such lines never merge.
    one_line_per_person_on: list[str] = Field(default_factory=lambda: ["family", "corporate"])


class SimSwapGuardCfg(Model):
    """Within `window_hours` after a SIM swap, a new identifier of a `guarded` type on that
    number is not merged without a second, independent link (account takeover by SIM swap)."""

    swap_rule: str = "sim_swap"  # the link rule whose evidence marks a swap
    window_hours: float = Field(72, ge=0)  # how long after a swap the guard holds
    # identifier types a swap may not bring in alone
    guarded: list[IdentifierType] = ["app_user_id", "email"]


class IdentityCfg(Model):
    country: CountryCfg = CountryCfg()  # the numbering plan numbers are normalised with
    junk: JunkCfg = JunkCfg()  # placeholder values: quarantined as junk_identifier, never linked
    # A value linked to more distinct lines and accounts than this is a placeholder typed on
    # many contracts (a shop's email, a dummy passport): flagged as junk, it links nothing.
    max_lines_per_value: dict[IdentifierType, int] = Field(default_factory=dict)
    # Types that are contacts when the strongest evidence puts one value on several persons (a
    # household email): a contact of each, never a key that merges them.
    contacts: list[IdentifierType] = Field(default_factory=list)
    sim_swap_guard: SimSwapGuardCfg = SimSwapGuardCfg()
    # Event field -> identifier type, for fields whose name is not the type (previous_iccid).
    identifier_fields: dict[str, IdentifierType] = Field(default_factory=dict)
    # link rules by name (docs/identity.md)
    rules: dict[str, LinkRule] = Field(default_factory=dict)
    # recyclable identifier types and the events that open and close their tenures
    tenures: dict[IdentifierType, TenureCfg] = Field(default_factory=dict)
    blocked: JunkCfg = JunkCfg()  # values that must never link anything (shop demo accounts...)
    guardrails: GuardrailCfg = GuardrailCfg()  # limits a merge may not break

    def evidence_sources(self) -> list[str]:
        """The sources identity reads evidence from: its rules' and its tenures' events."""
        sources = {r.source for r in self.rules.values()}
        for t in self.tenures.values():
            sources |= {e.source for e in (*t.opens, *t.closes)}
        return sorted(sources)

    def id_type(self, field_name: str) -> str | None:
        """The identifier type an event field carries (None: not an identifier)."""
        if field_name in self.identifier_fields:
            return self.identifier_fields[field_name]
        return field_name if field_name in IDENTIFIER_TYPES else None


# ---------------------------------------------------------------- generator


class BadRecordShares(Model):
    """Share of generated events (per kind) that break the contract in a known way: each is
    quarantined with the reason of its name."""

    bad_json: float = 0.001
    missing_field: float = 0.001
    wrong_type: float = 0.001
    unknown_event_type: float = 0.0005
    unknown_schema_version: float = 0.0005
    future_event_time: float = 0.0005
    duplicate: float = 0.002
    junk_identifier: float = 0.0005
    schema_drift: float = 0.002


class SituationShares(Model):
    """How often the generator makes each identity situation (docs/generator.md); the truth tags
    every person involved, so identity quality is scored per situation."""

    unreported_deactivation: float = 0.4  # of recycled numbers: billing never sent the end
    late_deactivation: float = 0.3  # of recycled numbers: the end arrives after the new start
    port_in: float = 0.6  # of ported-out numbers: ported in again later by someone else
    ownership_change: float = 0.01  # lines handed to a new holder or user, no deactivation
    passport_only_crm: float = 0.1  # individual holders whose CRM record names no line
    household_email: float = 0.03  # individual holders sharing one email with another holder
    shop_email: float = 0.01  # holders a shop registered with its own email
    junk_email: float = 0.05  # app users who type a placeholder email (a@a.a) at login
    sim_swap_takeover: float = 0.004  # lines whose SIM swap is followed by a stranger's login
    prepaid_no_kyc: float = 0.1  # prepaid holders with neither passport nor email
    two_accounts: float = 0.01  # holders with a second individual account (same passport)


class GeneratorCfg(Model):
    """Defaults for `cdp generate`; CLI flags override the scale ones."""

    seed: int = 42  # the same seed gives the same operator
    subscribers: int = Field(2000, ge=10)  # lines at the start
    days: int = Field(14, ge=1)  # days of events
    events_per_subscriber_per_day: float = Field(6.0, gt=0)  # on average, over all sources
    files_per_source: int = Field(4, ge=1)  # landing files each source's events are split into
    start_date: str = "2026-10-01"  # the first day (ISO date)
    family_account_share: float = 0.12  # of accounts: family plans (several users)
    corporate_account_share: float = 0.02  # of accounts: corporate (many lines)
    multi_line_person_share: float = 0.05  # of persons: more than one line
    late_event_share: float = 0.01  # of events: land hours to days after they happened
    recycle_share: float = 0.01  # of lines: deactivated and given to someone else
    sim_swap_share: float = 0.01  # of lines: a SIM swap
    port_out_share: float = 0.005  # of lines: ported out to another operator
    recycle_quarantine_days: int = 3  # days a number rests before it is reissued
    # shares of events that break the contract, per way
    bad_records: BadRecordShares = BadRecordShares()
    situations: SituationShares = SituationShares()


# ---------------------------------------------------------------- gold profile, scores, policy


class WindowsCfg(Model):
    short_days: int = Field(7, ge=1)  # the *_7d columns
    long_days: int = Field(30, ge=1)  # the *_30d columns

    @model_validator(mode="after")
    def _ordered(self) -> WindowsCfg:
        if self.short_days > self.long_days:
            raise ValueError("short_days must not exceed long_days")
        return self


class ProfileCfg(Model):
    """How silver events are attributed to identifiers and folded into the profile."""

    clock: Literal["event_time", "wall_clock"] = "event_time"  # what windows and SLAs end on
    windows: WindowsCfg = WindowsCfg()  # the rolling windows of the usage counters
    # source -> identifier fields, first present wins
    anchors: dict[str, list[IdentifierType]]
    # source -> event type -> channel name
    interactions: dict[str, dict[str, str]] = Field(default_factory=dict)
    churn_alert_threshold: float = Field(0.5, gt=0, lt=1)  # churn_risk crossing it: an event


# Churn features the code defines (pipelines/profile/scores.py); conf gives their weights.
CHURN_FEATURES = (
    "days_since_interaction",
    "usage_drop",
    "no_payment_30d",
    "open_cases",
    "low_balance",
    "app_user",
    "tenure_years",
)


class FeatureCfg(Model):
    weight: float  # the feature's weight in the logistic churn model
    cap: float | None = Field(None, gt=0)  # the feature's value is capped here before weighting


class ChurnCfg(Model):
    horizon_days: int = Field(90, ge=1)  # the horizon the churn risk speaks of
    intercept: float = 0.0  # the logistic model's intercept
    top_features: int = Field(3, ge=1)  # drivers listed per profile (churn_drivers)
    low_balance_below: float = Field(5000, ge=0)  # balance below which the low_balance feature is 1
    # feature -> weight and cap (the features are defined in code: scores.py)
    features: dict[str, FeatureCfg]

    @field_validator("features")
    @classmethod
    def _known(cls, v: dict[str, FeatureCfg]) -> dict[str, FeatureCfg]:
        unknown = sorted(set(v) - set(CHURN_FEATURES))
        if unknown:
            raise ValueError(
                f"unknown feature(s) {unknown}; defined features: {', '.join(CHURN_FEATURES)}"
            )
        return v


class LifetimeValueCfg(Model):
    margin: float = Field(0.35, gt=0, le=1)  # share of revenue that is margin
    horizon_months: int = Field(24, ge=1)  # months of monthly_spend counted


class ScoresCfg(Model):
    churn_risk: ChurnCfg  # the churn model (docs/profiles.md)
    lifetime_value: LifetimeValueCfg = LifetimeValueCfg()  # the lifetime-value estimate


class PurposeCfg(Model):
    # consent: needs the customer's consent; contract and legitimate_interest do not
    legal_basis: Literal["consent", "contract", "legitimate_interest"]
    description: str = ""  # what the purpose is (shown on the audience page and in the API)


class ChannelCfg(Model):
    """A channel (campaign tool, app, contact centre, NBA engine...) and the purposes it holds."""

    purposes: list[str]  # the purposes this channel holds: it sees only their attributes
    description: str = ""  # what the channel is


def package_version() -> str:
    """The installed package's version (pyproject.toml): `cdp --version` and the API's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("telecom-cdp")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed: run `make install`)"


def snake_case_keys(names: dict[str, M], what: str, longest: int = 100) -> dict[str, M]:
    """`names` unchanged when every key is lower_snake_case of at most `longest` characters."""
    bad = [n for n in names if not re.fullmatch(rf"[a-z][a-z0-9_]{{0,{longest - 1}}}", n)]
    if bad:
        raise ValueError(f"{what} must be lower_snake_case, at most {longest} characters: {bad}")
    return names


class PolicyCfg(Model):
    """Purposes and their legal basis, the purposes each served attribute may be used for, and
    the purposes each channel holds (conf/policy.yaml). Anything not listed is never served."""

    purposes: dict[str, PurposeCfg]  # purpose -> legal basis
    # served attribute -> the purposes it may be used for
    attributes: dict[str, list[str]] = Field(default_factory=dict)
    # channel -> the purposes it holds
    channels: dict[str, ChannelCfg] = Field(default_factory=dict)

    @field_validator("purposes")
    @classmethod
    def _names(cls, v: dict[str, PurposeCfg]) -> dict[str, PurposeCfg]:
        return snake_case_keys(v, "purpose names (they name columns)")

    @model_validator(mode="after")
    def _known_purposes(self) -> PolicyCfg:
        known = set(self.purposes)
        for where, names in [
            *((f"attributes.{a}", ps) for a, ps in self.attributes.items()),
            *((f"channels.{c}.purposes", ch.purposes) for c, ch in self.channels.items()),
        ]:
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(
                    f"{where}: unknown purpose(s) {unknown}; purposes: {', '.join(sorted(known))}"
                )
        return self


class EndpointCfg(Model):
    """Where segment pushes for a channel go: an HTTP endpoint (signed with the secret in the
    environment variable `secret_env`) or a folder that receives one file per push part."""

    # http: POST signed parts; file: one file per part in a folder
    kind: Literal["http", "file"] = "file"
    url: str | None = None  # http: the endpoint; CDP_ENDPOINT_<CHANNEL> overrides it
    path: Path | None = None  # file: the folder (default <data root>/pushes/<channel>)
    secret_env: str | None = None  # http: default CDP_ENDPOINT_SECRET_<CHANNEL>


class RateLimitsCfg(Model):
    """Requests per API key and API process (`<count>/<second|minute|hour>`, the `limits`
    notation); over it a request gets 429 with Retry-After. With N workers a key may reach N
    times the rate on one host."""

    lookup: str = Field("2000/second", pattern=RATE)  # profile lookups of a channel key
    collect: str = Field("200/second", pattern=RATE)  # collector posts of a source key


class EventsCfg(Model):
    """Event delivery to subscribers and channel endpoints (one worker delivers at a time)."""

    poll_s: float = Field(0.2, gt=0)  # how often the deliverer looks for new work
    batch: int = Field(100, ge=1, le=10_000)  # events per webhook request
    max_attempts: int = Field(8, ge=1)  # then the message is parked in the dead-letter list
    backoff_s: float = Field(0.5, gt=0)  # first retry delay, doubled per attempt
    backoff_max_s: float = Field(300, gt=0)  # the longest retry delay
    timeout_s: float = Field(10, gt=0)  # per HTTP request
    push_part_members: int = Field(1000, ge=1)  # entered profiles per push request
    deliver: bool = True  # `cdp serve` starts the deliverer (false: run `cdp deliver` apart)


class ApiCfg(Model):
    """The serving API: where it listens, how often it looks for a new gold version, and where
    operational state (keys, audit) lives."""

    host: str = "127.0.0.1"  # address `cdp serve` listens on (0.0.0.0: every interface)
    port: int = Field(8000, ge=1, le=65535)  # its port
    workers: int = Field(1, ge=1)  # API processes; they share the snapshot base file
    snapshot_poll_s: float = Field(2.0, gt=0)  # how often a process looks for a new gold version
    # On SIGTERM, how long open requests (event streams never end by themselves) may run on
    # before they are closed; an event-stream client resumes with Last-Event-ID.
    shutdown_grace_s: int = Field(5, ge=1)
    # One JSON line per request on stderr: time, request id, method, route template, status, ms.
    access_log: bool = True
    database_url: str | None = None  # ops store (SQLAlchemy URL); default SQLite by the lake
    max_body_bytes: int = Field(5_000_000, ge=1024)  # collector: larger bodies get 413
    max_events: int = Field(10_000, ge=1)  # collector: events in one body (more: 413)
    max_json_depth: int = Field(16, ge=2, le=64)  # nesting of an event's JSON (deeper: 400)
    max_string_chars: int = Field(10_000, ge=64)  # one JSON string or key (longer: 413)
    rate_limits: RateLimitsCfg = Field(default_factory=RateLimitsCfg)
    endpoints: dict[str, EndpointCfg] = Field(default_factory=dict)  # per channel
    events: EventsCfg = Field(default_factory=EventsCfg)


class SlaCfg(Model):
    """Service levels (conf/sla.yaml): table freshness, end-to-end lag, quarantine rate per
    source (a breach blocks promotion to gold) and API latency."""

    freshness_minutes: dict[str, float] = Field(default_factory=dict)  # table -> max lag
    end_to_end_lag_s: float = Field(10, gt=0)  # landing to gold, per micro-batch
    quarantine_rate: dict[str, float] = Field(default_factory=dict)  # source -> max share
    api_p99_ms: float = Field(5, gt=0)  # profile lookups, measured by each API process

    def max_quarantine_rate(self, source: str) -> float:
        """The source's limit; a source without one may not quarantine anything."""
        return self.quarantine_rate.get(source, 0.0)


class RetentionCfg(Model):
    """How long rows are kept (conf/retention.yaml): rows of a named table older than its days
    are deleted by the nightly retention run, and the files that held them vacuumed after
    `vacuum_hours`. Raw lines age from their ingestion (wall clock), events from when they
    happened (the data clock). Tables not named keep everything."""

    tables: dict[str, PositiveFloat] = Field(default_factory=dict)  # table -> days rows are kept
    audit_days: float | None = Field(None, gt=0)  # lookup and push audit records (ops store)
    # Files that held deleted rows stay this long for readers of older versions (time travel,
    # a running stream); below 168 (Delta's default) older versions lose their files sooner.
    vacuum_hours: float = Field(168, ge=0)


# ---------------------------------------------------------------- the whole thing


class TriggerCfg(Model):
    """A real-time trigger (conf/triggers.yaml): fires for a person when their gold profile
    starts to match `when` (a segment rule, docs/segments.md), at most once per `once_per`
    (`day`, `week` or `month` of the profile clock, or an attribute: once per value of it)."""

    description: str = ""  # what the trigger means (shown on the audience page)
    purpose: str  # the purpose the event is sent for (consent-filtered like any output)
    when: dict[str, Any]  # the segment rule the profile starts to match
    once_per: str = "day"  # day, week, month, or an attribute: at most once per value of it
    fields: list[str] = Field(default_factory=list)  # attributes the event carries


class TriggersCfg(Model):
    # trigger name -> its rule (docs/events.md)
    triggers: dict[str, TriggerCfg] = Field(default_factory=dict)

    @field_validator("triggers")
    @classmethod
    def _names(cls, v: dict[str, TriggerCfg]) -> dict[str, TriggerCfg]:
        return snake_case_keys(v, "trigger names (they are in event ids)", longest=40)


class Settings(Model):
    conf_dir: Path
    engine: EngineCfg
    paths: PathsCfg
    source: SourceCfg = SourceCfg()
    contracts: dict[str, SourceContract]
    reference: ReferenceContract
    identity: IdentityCfg
    generator: GeneratorCfg
    profile: ProfileCfg
    scores: ScoresCfg
    policy: PolicyCfg
    api: ApiCfg = ApiCfg()
    sla: SlaCfg = SlaCfg()
    triggers: dict[str, TriggerCfg] = Field(default_factory=dict)
    retention: RetentionCfg = RetentionCfg()

    def contract(self, source: str) -> SourceContract:
        try:
            return self.contracts[source]
        except KeyError:
            known = ", ".join(sorted(self.contracts))
            raise ConfigError(f"unknown source {source!r}; contracts exist for: {known}") from None

    @property
    def sources(self) -> list[str]:
        return sorted(self.contracts)

    @property
    def database_url(self) -> str:
        """Operational state (keys, audit): the configured URL, else SQLite by the lake."""
        return self.api.database_url or f"sqlite:///{self.paths.lake_root.parent / 'ops.sqlite'}"

    @property
    def data_root(self) -> Path:
        """The folder the lake, the ops database and the delivery state live in."""
        return self.paths.lake_root.parent

    def endpoint(self, channel: str, env: Mapping[str, str] | None = None) -> ResolvedEndpoint:
        """Where pushes for `channel` go: `CDP_ENDPOINT_<CHANNEL>` (an http URL) wins over
        conf/api.yaml, which wins over a folder under the data root."""
        env = os.environ if env is None else env
        name = channel.upper()
        cfg = self.api.endpoints.get(channel, EndpointCfg())
        url = env.get(f"CDP_ENDPOINT_{name}") or cfg.url
        secret_env = cfg.secret_env or f"CDP_ENDPOINT_SECRET_{name}"
        if url:
            return ResolvedEndpoint(channel, "http", url, None, env.get(secret_env), secret_env)
        folder = cfg.path or self.data_root / "pushes" / channel
        return ResolvedEndpoint(channel, "file", None, folder, None, secret_env)


@dataclass(frozen=True)
class ResolvedEndpoint:
    """A channel's push endpoint as it is now (the secret read from the environment)."""

    channel: str
    kind: str  # http | file
    url: str | None
    path: Path | None
    secret: str | None
    secret_env: str


_ENV_PATHS = {
    "CDP_LAKE_ROOT": "lake_root",
    "CDP_LANDING_ROOT": "landing_root",
    "CDP_CHECKPOINT_ROOT": "checkpoint_root",
    "CDP_TRUTH_ROOT": "truth_root",
}
# Serving overrides (containers, tests and benchmarks pick a port and a worker count).
_ENV_API = {
    "CDP_API_HOST": "host",
    "CDP_API_PORT": "port",
    "CDP_API_WORKERS": "workers",
    "CDP_API_SNAPSHOT_POLL_S": "snapshot_poll_s",
    "CDP_API_DATABASE_URL": "database_url",
}
# Folder names below CDP_DATA_ROOT, the same as the defaults in conf/engine.yaml.
_DATA_SUBDIRS = {
    "lake_root": "lake",
    "landing_root": "landing",
    "checkpoint_root": "checkpoints",
    "truth_root": "truth",
}


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return yaml.safe_load(os.path.expandvars(text)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def _parse(model: type[M], data: Any, path: Path, section: str | None = None) -> M:
    """`data` validated as `model`; errors name the file and the key (under `section`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = [section, *err["loc"]] if section else err["loc"]
            key = ".".join(str(p) for p in loc) or "(top level)"
            lines.append(f"  {key}: {err['msg']}")
        raise ConfigError(f"{path}: invalid configuration\n" + "\n".join(lines)) from None


def load_settings(conf_dir: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read every file under `conf_dir` once, apply `CDP_*` overrides and validate."""
    env = os.environ if env is None else env
    # An explicit folder (--conf) wins over $CDP_CONF_DIR, which wins over ./conf.
    conf_dir = Path(conf_dir or env.get("CDP_CONF_DIR") or DEFAULT_CONF_DIR).resolve()
    engine, paths, source = _engine_and_paths(conf_dir / "engine.yaml", env)
    contracts = _contracts(conf_dir / "contracts")
    ref_path = conf_dir / "contracts" / "reference.yaml"
    identity_path = conf_dir / "identity.yaml"
    identity = _parse(IdentityCfg, _read_yaml(identity_path), identity_path)
    _check_identity_rules(identity, contracts, identity_path)
    gen_path = conf_dir / "generator.yaml"
    profile_path = conf_dir / "profile.yaml"
    profile = _parse(ProfileCfg, _read_yaml(profile_path), profile_path)
    _check_profile(profile, contracts, profile_path)
    scores_path = conf_dir / "scores.yaml"
    policy_path = conf_dir / "policy.yaml"
    policy = _parse(PolicyCfg, _read_yaml(policy_path), policy_path)
    return Settings(
        conf_dir=conf_dir,
        engine=engine,
        paths=paths,
        source=source,
        contracts=contracts,
        reference=_parse(ReferenceContract, _read_yaml(ref_path), ref_path),
        identity=identity,
        generator=_parse(GeneratorCfg, _read_yaml(gen_path), gen_path),
        profile=profile,
        scores=_parse(ScoresCfg, _read_yaml(scores_path), scores_path),
        policy=policy,
        api=_api(conf_dir / "api.yaml", env, policy),
        sla=_sla(conf_dir / "sla.yaml", contracts),
        triggers=_triggers(conf_dir / "triggers.yaml", policy),
        retention=_retention(conf_dir / "retention.yaml"),
    )


def _engine_and_paths(
    engine_path: Path, env: Mapping[str, str]
) -> tuple[EngineCfg, PathsCfg, SourceCfg]:
    """engine.yaml with CDP_SPARK_MASTER, CDP_STREAM_METRICS_PORT/_HOST, CDP_DATA_ROOT, the
    CDP_*_ROOT overrides and CDP_SOURCE_KIND, CDP_KAFKA_BOOTSTRAP_SERVERS and
    CDP_KAFKA_TOPIC_PREFIX."""
    raw = _read_yaml(engine_path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{engine_path}: expected a mapping at the top level")
    unknown = set(raw) - {"engine", "paths", "source"}
    if unknown:
        raise ConfigError(f"{engine_path}: unknown top-level key(s) {sorted(unknown)}")
    engine_raw = dict(raw.get("engine") or {})
    if env.get("CDP_SPARK_MASTER"):
        engine_raw["spark_master"] = env["CDP_SPARK_MASTER"]
    for key in ("metrics_port", "metrics_host"):
        if env.get(var := f"CDP_STREAM_{key.upper()}"):
            engine_raw[key] = env[var]
    paths_raw = dict(raw.get("paths") or {})
    if data_root := env.get("CDP_DATA_ROOT"):
        for key, sub in _DATA_SUBDIRS.items():
            paths_raw[key] = str(Path(data_root) / sub)
    paths_raw |= {key: env[var] for var, key in _ENV_PATHS.items() if env.get(var)}
    source_raw = dict(raw.get("source") or {})
    if env.get("CDP_SOURCE_KIND"):
        source_raw["kind"] = env["CDP_SOURCE_KIND"]
    kafka_raw = dict(source_raw.get("kafka") or {})
    for key in ("bootstrap_servers", "topic_prefix"):
        if env.get(var := f"CDP_KAFKA_{key.upper()}"):
            kafka_raw[key] = env[var]
    source_raw["kafka"] = kafka_raw
    engine = _parse(EngineCfg, engine_raw, engine_path, "engine")
    paths = _parse(PathsCfg, paths_raw, engine_path, "paths")
    source = _parse(SourceCfg, source_raw, engine_path, "source")
    # Relative paths are relative to the project, not to wherever the command was started.
    paths = PathsCfg(
        **{k: (v if v.is_absolute() else PROJECT_ROOT / v) for k, v in paths.model_dump().items()}
    )
    return engine, paths, source


def _contracts(folder: Path) -> dict[str, SourceContract]:
    """Every source contract in `folder` (reference.yaml is the reference tables' own)."""
    contracts: dict[str, SourceContract] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.stem == "reference":
            continue
        contract = _parse(SourceContract, _read_yaml(path), path)
        if contract.source != path.stem:
            raise ConfigError(f"{path}: source: {contract.source!r} must match the file name")
        contracts[contract.source] = contract
    if not contracts:
        raise ConfigError(f"{folder}: no source contracts found")
    return contracts


def _api(api_path: Path, env: Mapping[str, str], policy: PolicyCfg) -> ApiCfg:
    """api.yaml (optional) with the CDP_API_* and CDP_EVENTS_* overrides."""
    api_raw = dict(_read_yaml(api_path) or {}) if api_path.exists() else {}
    api_raw |= {key: env[var] for var, key in _ENV_API.items() if env.get(var)}
    events_raw = dict(api_raw.get("events") or {})
    for key in EventsCfg.model_fields:  # CDP_EVENTS_POLL_S, CDP_EVENTS_MAX_ATTEMPTS, ...
        if env.get(var := f"CDP_EVENTS_{key.upper()}"):
            events_raw[key] = env[var]
    api_raw["events"] = events_raw
    limits_raw = dict(api_raw.get("rate_limits") or {})
    for key in RateLimitsCfg.model_fields:  # CDP_API_RATE_LIMIT_LOOKUP=50000/second, ...
        if env.get(var := f"CDP_API_RATE_LIMIT_{key.upper()}"):
            limits_raw[key] = env[var]
    api_raw["rate_limits"] = limits_raw
    api = _parse(ApiCfg, api_raw, api_path)
    if unknown_channels := sorted(set(api.endpoints) - set(policy.channels)):
        raise ConfigError(
            f"{api_path}: endpoints names unknown channels {unknown_channels}; "
            f"the policy has {sorted(policy.channels)}"
        )
    return api


def _sla(sla_path: Path, contracts: dict[str, SourceContract]) -> SlaCfg:
    sla = _parse(SlaCfg, _read_yaml(sla_path), sla_path) if sla_path.exists() else SlaCfg()
    if unknown_sources := sorted(set(sla.quarantine_rate) - set(contracts)):
        raise ConfigError(
            f"{sla_path}: quarantine_rate names unknown sources {unknown_sources}; "
            f"contracts exist for {sorted(contracts)}"
        )
    return sla


def _retention(path: Path) -> RetentionCfg:
    """retention.yaml (optional)."""
    if not path.exists():
        return RetentionCfg()
    return _parse(RetentionCfg, _read_yaml(path), path)


def _triggers(path: Path, policy: PolicyCfg) -> dict[str, TriggerCfg]:
    """triggers.yaml (optional). Each trigger's purpose must be the policy's, and what its event
    carries (its fields, an attribute window's value) must be usable for that purpose; the rule
    itself is checked against the gold schema by `check_policy`."""
    if not path.exists():
        return {}
    triggers = _parse(TriggersCfg, _read_yaml(path), path).triggers
    for name, trigger in triggers.items():
        where = f"{path}: triggers.{name}"
        if trigger.purpose not in policy.purposes:
            raise ConfigError(
                f"{where}.purpose: unknown purpose {trigger.purpose!r}; "
                f"one of {sorted(policy.purposes)}"
            )
        carried = [("fields", f) for f in trigger.fields]
        if trigger.once_per not in ("day", "week", "month"):
            carried.append(("once_per", trigger.once_per))
        for key, attr in carried:
            if trigger.purpose not in policy.attributes.get(attr, []):
                raise ConfigError(
                    f"{where}.{key}: {attr!r} is not an attribute the policy allows for "
                    f"{trigger.purpose} (conf/policy.yaml attributes; once_per is day, week, "
                    "month or such an attribute)"
                )
    return triggers


def _check_profile(profile: ProfileCfg, contracts: dict[str, SourceContract], path: Path) -> None:
    """Anchors and interactions must name contracts' sources, event types and fields."""
    for source, fields in profile.anchors.items():
        contract = contracts.get(source)
        if contract is None:
            raise ConfigError(f"{path}: anchors.{source}: no contract for source {source!r}")
        known = set(contract.silver_fields())
        for f in fields:
            if f not in known:
                raise ConfigError(
                    f"{path}: anchors.{source}: {source} events have no field {f!r} "
                    f"(identifier fields: {', '.join(sorted(known & set(IDENTIFIER_TYPES)))})"
                )
    for source, types in profile.interactions.items():
        contract = contracts.get(source)
        if contract is None:
            raise ConfigError(f"{path}: interactions.{source}: no contract for source {source!r}")
        known_types = {n for v in contract.active_versions() for n in v.event_types}
        for et in types:
            if et not in known_types:
                raise ConfigError(
                    f"{path}: interactions.{source}.{et}: {source} has no event type {et!r} "
                    f"(known: {', '.join(sorted(known_types))})"
                )


def _check_identity_rules(
    identity: IdentityCfg, contracts: dict[str, SourceContract], path: Path
) -> None:
    """Every rule and tenure event must name a contract's event type and fields."""

    def check(key: str, source: str, event_type: str, fields: list[str]) -> None:
        contract = contracts.get(source)
        if contract is None:
            raise ConfigError(f"{path}: {key}.source: no contract for source {source!r}")
        known = {name: et for v in contract.active_versions() for name, et in v.event_types.items()}
        if event_type not in known:
            raise ConfigError(
                f"{path}: {key}.event_type: {source} has no event type {event_type!r} "
                f"(known: {', '.join(sorted(known))})"
            )
        for f in fields:
            if f not in known[event_type].fields:
                raise ConfigError(
                    f"{path}: {key}: {source}.{event_type} has no field {f!r} "
                    f"(fields: {', '.join(sorted(known[event_type].fields))})"
                )

    for name, rule in identity.rules.items():
        check(f"rules.{name}", rule.source, rule.event_type, [*rule.link, *rule.when])
        for f in rule.link:
            if identity.id_type(f) is None:
                raise ConfigError(
                    f"{path}: rules.{name}.link: {f!r} is not an identifier field; map it in "
                    "identifier_fields"
                )
    for id_type, tenure in identity.tenures.items():
        for side, events in (("opens", tenure.opens), ("closes", tenure.closes)):
            for i, ev in enumerate(events):
                check(f"tenures.{id_type}.{side}[{i}]", ev.source, ev.event_type, [ev.field])


__all__ = [
    "ConfigError",
    "Settings",
    "SourceContract",
    "FieldSpec",
    "load_settings",
    "ENVELOPE_FIELDS",
]
