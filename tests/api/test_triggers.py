"""Real-time triggers end to end: source lines land, the real ingestion, identity and gold steps
run micro-batch by micro-batch, and a live server's deliverer sends what fired to a webhook and
over SSE. The scenario is written per person here, so every expected event follows from it:
each trigger fires when its person starts to match, once per window (a second crossing the same
day, more usage the same month, a replay: no second event), never on a value the person did not
consent to, and reaches only channels holding its purpose."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import polars as pl
import pytest

from bench.receiver import Receiver
from bench.server import ServeProcess
from pipelines.lakehouse.catalog import MAP, OUTBOX, PROFILES
from pipelines.lakehouse.lake import Lake
from pipelines.ops.keys import KeyStore
from tests.api.conftest import SECRET, wait_for
from tests.conftest import settings_for
from tests.spark.helpers import land

pytestmark = [pytest.mark.api, pytest.mark.slow]
ROAMING = "Roaming Turkey"


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _months_back(ts: datetime, months: int) -> datetime:
    year, month = divmod(ts.month - 1 - months, 12)
    return ts.replace(year=ts.year + year, month=month + 1, day=min(ts.day, 28))


class Scenario:
    """Lines for chosen persons, landed as source files and run through ingestion, identity and
    gold in lockstep (one file per micro-batch, as the stream runs them)."""

    def __init__(self, spark: Any, root: Any) -> None:
        self.spark, self.settings = spark, settings_for(root, max_files_per_trigger=1)
        self.lake = Lake(self.settings.paths.lake_root)
        self.files = 0

    def run(self, lines: list[tuple[str, str, datetime, dict[str, Any]]]) -> None:
        """Land (source, event type, time, fields) lines, one file per source, and process."""
        from pipelines.identity.stage import refresh_identity
        from pipelines.ingest.stream import Ingestion
        from pipelines.profile.stage import refresh_gold

        by_source: dict[str, list[dict[str, Any]]] = {}
        for source, event_type, ts, fields in lines:
            self.files += 1
            by_source.setdefault(source, []).append(
                {
                    "event_id": f"trig-{self.files}",
                    "source": source,
                    "event_type": event_type,
                    "event_ts": _iso(ts),
                    "schema_version": 1,
                    **fields,
                }
            )
        for source, events in by_source.items():
            land(self.settings, source, f"{source}-trig-{self.files}.jsonl", events)

        def downstream(session: Any) -> None:
            refresh_identity(session, self.lake, self.settings)
            refresh_gold(self.lake, self.settings)

        Ingestion(self.spark, self.settings, self.lake, downstream=downstream, lockstep=True).run()


@pytest.fixture(scope="module")
def triggered(
    operator: dict[str, Any], spark: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("triggers")
    shutil.copytree(operator["settings"].paths.lake_root, root / "lake")
    scenario = Scenario(spark, root)
    lake, settings = scenario.lake, scenario.settings
    newest = lake.read_polars(PROFILES)["last_event_ts"].max()
    assert isinstance(newest, datetime)
    at = newest + timedelta(seconds=1)  # after every event so far: each line is the newest
    started = _months_back(at, 12) + timedelta(days=20)  # a 12-month term ends in ~20 days
    lines = lake.read_polars(MAP).filter(
        (pl.col("id_type") == "msisdn") & pl.col("valid_to").is_null()
    )
    # Persons with one line, opened before `started`, that no trigger has fired for yet.
    fired_before = lake.read_polars(OUTBOX).filter(pl.col("event_type") == "trigger.fired")
    profiles = lake.read_polars(PROFILES).filter(
        (pl.col("msisdns").list.len() == 1)
        & pl.col("person_id").is_in(
            lines.filter(pl.col("valid_from") < started - timedelta(days=1))["person_id"].implode()
        )
        & ~pl.col("person_id").is_in(fired_before["person_id"].implode())
    )
    tariffs = lake.read_polars("ref.tariffs")
    bundled = tariffs.filter(pl.col("data_gb") > 0)["tariff_id"].to_list()
    taken: set[str] = set()

    def pick(condition: pl.Expr) -> dict[str, Any]:
        rows = profiles.filter(condition & ~pl.col("person_id").is_in(list(taken)))
        row = rows.sort("person_id").row(0, named=True)
        taken.add(row["person_id"])
        return row

    granted = lambda p: pl.col(f"consent_{p}_granted").fill_null(False)  # noqa: E731
    who = {
        "bundle": pick(pl.col("tariff_id").is_in(bundled) & (pl.col("data_bundle_used") < 0.5)),
        "balance": pick(pl.col("balance_total") >= 20_000),
        "roamer": pick(granted("location") & (pl.col("last_region") != ROAMING)),
        "roamer_no_consent": pick(~granted("location")),
        "swap": pick(pl.col("last_sim_swap_ts").is_null()),
        "renewal": pick(granted("marketing") & pl.col("contract_end_ts").is_null()),
        "renewal_no_consent": pick(~granted("marketing") & pl.col("contract_end_ts").is_null()),
    }
    iccids = dict(
        lake.read_polars(MAP)
        .filter((pl.col("id_type") == "iccid") & pl.col("valid_to").is_null())
        .select("person_id", "id_value")
        .unique("person_id")
        .iter_rows()
    )
    clock: date = at.date()  # the event-time clock: the newest event's day

    def line(p: str) -> dict[str, Any]:
        return {"msisdn": who[p]["primary_msisdn"]}

    def paid(p: str, balance: int, ts: datetime) -> tuple[str, str, datetime, dict[str, Any]]:
        fields = {"account_id": who[p]["account_id"], "amount": 1000, "currency": "UZS"}
        return ("billing", "payment", ts, {**line(p), **fields, "balance_after": balance})

    def swapped(n: int, ts: datetime) -> tuple[str, str, datetime, dict[str, Any]]:
        fields = {
            "account_id": who["swap"]["account_id"],
            "iccid": f"8999870000000{n:06d}",
            "previous_iccid": iccids.get(who["swap"]["person_id"], "8999870000000000000"),
        }
        return ("billing", "sim_swap", ts, {**line("swap"), **fields})

    bundle_bytes = int(
        tariffs.filter(pl.col("tariff_id") == who["bundle"]["tariff_id"])["data_gb"][0] * 1e9
    )
    session = {"session_id": "trig-s1", "bytes_up": 0, "duration_s": 60}
    renewed = {"tariff_id": "T-PLUS"}  # a 12-month term
    rounds = [
        [
            (
                "network",
                "data_session_end",
                at,
                {**line("bundle"), **session, "bytes_down": bundle_bytes * 85 // 100},
            ),
            paid("balance", 1000, at),
            ("network", "location", at, {**line("roamer"), "cell_id": "TUR-1", "region": ROAMING}),
            (
                "network",
                "location",
                at,
                {**line("roamer_no_consent"), "cell_id": "TUR-2", "region": ROAMING},
            ),
            swapped(1, at),
            (
                "billing",
                "tariff_change",
                started,
                {**line("renewal"), "account_id": who["renewal"]["account_id"], **renewed},
            ),
            (
                "billing",
                "tariff_change",
                started,
                {
                    **line("renewal_no_consent"),
                    "account_id": who["renewal_no_consent"]["account_id"],
                    **renewed,
                },
            ),
        ],
        # Back above the threshold; more data the same month.
        [
            paid("balance", 30_000, at + timedelta(seconds=1)),
            (
                "network",
                "data_session_end",
                at + timedelta(seconds=1),
                {**line("bundle"), **session, "session_id": "trig-s2", "bytes_down": 10**9},
            ),
        ],
        # Below again the same day (same window: no second event); a second SIM swap (new one).
        [paid("balance", 2000, at + timedelta(seconds=2)), swapped(2, at + timedelta(seconds=2))],
    ]
    receiver = Receiver(SECRET)
    store = KeyStore(settings.database_url)
    keys = {c: store.create(f"test {c}", "channel", c) for c in settings.policy.channels}
    keys["marketing"] = store.create("test marketing", "marketing")
    server = ServeProcess(root, {"CDP_API_SNAPSHOT_POLL_S": "0.2", "CDP_EVENTS_POLL_S": "0.05"})
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            subs = {}
            for name, channel, filter_ in [
                ("app", "mobile_app", {}),
                ("fraud", "fraud_desk", {"trigger": "sim_swapped"}),
            ]:
                body = {
                    "event_types": ["trigger.fired"],
                    "filter": filter_,
                    "url": f"{receiver.url}/{name}",
                    "secret": SECRET,
                }
                r = client.post(
                    "/v1/subscriptions", json=body, headers={"X-API-Key": keys[channel]}
                )
                assert r.status_code == 201, r.text
                subs[name] = r.json()["subscription_id"]
            for lines in rounds:
                scenario.run(lines)
            outbox = lake.read_polars(OUTBOX).filter(pl.col("event_type") == "trigger.fired")
            yield {
                "who": {k: v["person_id"] for k, v in who.items()},
                "outbox": outbox,
                "clock": clock,
                "at": at,
                "started": started,
                "receiver": receiver,
                "client": client,
                "keys": keys,
                "server": server,
            }
    finally:
        receiver.stop()
        assert server.stop(), "cdp serve did not stop cleanly"


def _fired(triggered: dict[str, Any], events: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(trigger, scenario role, window) of the events about the scenario's persons."""
    role = {p: r for r, p in triggered["who"].items()}
    out = set()
    for e in events:
        payload = e["payload"] if isinstance(e["payload"], dict) else json.loads(e["payload"])
        if e["person_id"] in role:
            out.add((payload["trigger"], role[e["person_id"]], payload["window"]))
    return out


def test_each_trigger_fires_once_per_window_for_whom_the_scenario_says(
    triggered: dict[str, Any],
) -> None:
    clock, at = triggered["clock"], triggered["at"]
    swaps = [(at + timedelta(seconds=s)).astimezone(UTC).isoformat() for s in (0, 2)]
    contract_end = triggered["started"].replace(year=triggered["started"].year + 1)
    expected = {
        ("bundle_80", "bundle", f"{clock.year}-{clock.month:02d}"),
        ("low_balance", "balance", clock.isoformat()),
        ("roaming_started", "roamer", clock.isoformat()),
        ("sim_swapped", "swap", swaps[0]),
        ("sim_swapped", "swap", swaps[1]),
        ("contract_ending", "renewal", contract_end.astimezone(UTC).isoformat()),
    }
    outbox = triggered["outbox"]
    assert _fired(triggered, outbox.to_dicts()) == expected
    mine = outbox.filter(pl.col("person_id").is_in(list(triggered["who"].values())))
    ids = mine["event_id"].to_list()
    # The low balance crossed twice the same day: two outbox rows, one event id.
    low = [i for i in ids if i.startswith("trigger:low_balance:")]
    assert len(low) == 2 and len(set(low)) == 1
    assert len(set(ids)) == len(expected)


def test_what_fired_reaches_webhooks_once_and_only_channels_holding_the_purpose(
    triggered: dict[str, Any],
) -> None:
    receiver = triggered["receiver"]

    mine = set(triggered["who"].values())

    def received(path: str, n: int) -> list[dict[str, Any]]:
        got = [e for r in receiver.at(path) for e in r.json()["events"] if e["person_id"] in mine]
        return got if len({e["event_id"] for e in got}) >= n else []

    app = wait_for("the app's webhook", lambda: received("/app", 5), timeout=60)
    assert all(r.signed for r in receiver.at("/app"))
    # mobile_app holds service and marketing: not location (the roaming trigger).
    assert {(t, r) for t, r, _ in _fired(triggered, app)} == {
        ("bundle_80", "bundle"),
        ("low_balance", "balance"),
        ("sim_swapped", "swap"),
        ("contract_ending", "renewal"),
    }
    assert len({e["event_id"] for e in app}) == len(_fired(triggered, app)) == 5
    fraud = wait_for("the fraud desk's webhook", lambda: received("/fraud", 2), timeout=60)
    assert {(t, r) for t, r, _ in _fired(triggered, fraud)} == {("sim_swapped", "swap")}


def test_the_stream_carries_location_triggers_to_a_channel_holding_location(
    triggered: dict[str, Any],
) -> None:
    """nba_engine holds location and marketing (not service): the roaming and contract
    triggers, nothing about the person who did not consent to location."""
    seen: list[dict[str, Any]] = []
    headers = {"X-API-Key": triggered["keys"]["nba_engine"]}
    url = f"{triggered['server'].url}/v1/events/stream"
    with httpx.stream(
        "GET", url, params={"types": "trigger.fired", "since": 0}, headers=headers, timeout=30
    ) as r:
        for text in r.iter_lines():
            if text.startswith("data: "):
                seen.append(json.loads(text[6:]))
                if {t for t, _, _ in _fired(triggered, seen)} >= {
                    "roaming_started",
                    "contract_ending",
                }:
                    break
    roles = {(t, r) for t, r, _ in _fired(triggered, seen)}
    assert roles == {("roaming_started", "roamer"), ("contract_ending", "renewal")}


@pytest.mark.e2e
def test_the_audience_page_lists_every_trigger_with_how_often_it_fired(
    triggered: dict[str, Any], browser: Any
) -> None:
    """In a real browser: the page's trigger table has each trigger of conf/triggers.yaml with
    its rule and the events it logged (every trigger.fired id of the outbox, logged once)."""
    logged = triggered["outbox"].unique("event_id")
    counts = {
        name: str(logged.filter(pl.col("event_id").str.starts_with(f"trigger:{name}:")).height)
        for name in (
            "bundle_80",
            "low_balance",
            "roaming_started",
            "contract_ending",
            "sim_swapped",
        )
    }
    headers = {"X-API-Key": triggered["keys"]["marketing"]}

    def all_logged() -> bool:
        listed = triggered["client"].get("/v1/triggers", headers=headers).json()
        return {t["name"]: str(t["fired_7d"]) for t in listed} == counts

    wait_for("the deliverer to log every trigger event of the outbox", all_logged, timeout=60)
    page = browser.new_page(viewport={"width": 1600, "height": 900})
    page.goto(f"{triggered['server'].url}/ui")
    page.get_by_label("Marketing API key").fill(triggered["keys"]["marketing"])
    page.get_by_role("button", name="Use key").click()
    table = page.locator("#triggers")
    table.get_by_role("cell", name="sim_swapped").wait_for()
    rows = {
        r.locator("td").nth(0).inner_text(): [
            r.locator("td").nth(i).inner_text() for i in range(1, 6)
        ]
        for r in table.locator("tbody tr").all()
    }
    assert set(rows) == set(counts)
    assert rows["low_balance"][:3] == ["balance_total < 5000", "service", "day"]
    assert rows["contract_ending"][0] == "contract_end_ts within next 30 days"
    assert {name: cells[4] for name, cells in rows.items()} == counts
