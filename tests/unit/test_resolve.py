"""Identity resolution on hand-written evidence: tenures, guardrails, blocked values, stable ids,
merges and splits, as a steward would expect them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines.config import IdentityCfg, Settings
from pipelines.identity.evidence import EVIDENCE_SCHEMA
from pipelines.identity.outputs import account_view, person_changes
from pipelines.identity.resolve import Blocklist, Resolution, person_id_of, regions_of, resolve

pytestmark = pytest.mark.unit

T0 = datetime(2026, 10, 1, tzinfo=UTC)
RULE_TIER = {
    "line_sim": 1,
    "sim_swap": 1,
    "crm_passport_account": 1,
    "crm_email_passport": 2,
    "individual_holder": 1,
    "app_login_line": 1,
    "crm_passport": 1,
    "crm_email": 2,
    "app_login_email": 3,
    "account_line": 1,
}


class Feed:
    """Evidence rows in ingest order: each `add` arrives one second after the previous one."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def _row(self, **kw: object) -> dict[str, object]:
        n = len(self.rows)
        row = dict.fromkeys(EVIDENCE_SCHEMA.names)
        row.update(
            event_id=f"e{n:04d}",
            source="test",
            event_type="test",
            ingest_ts=T0 + timedelta(days=30, seconds=n),
        )
        row.update(kw)
        self.rows.append(row)
        return row

    def link(self, rule: str, a: str, b: str, day: float, **kw: object) -> None:
        (at, av), (bt, bv) = a.split(":", 1), b.split(":", 1)
        kind = "member" if rule == "account_line" else "merge"
        self._row(
            kind=kind,
            rule=rule,
            tier=RULE_TIER[rule],
            a_type=at,
            a_value=av,
            b_type=bt,
            b_value=bv,
            valid_from=T0 + timedelta(days=day),
            **kw,
        )

    def activate(
        self,
        msisdn: str,
        iccid: str,
        account: str,
        day: float,
        account_type: str = "individual",
        role: str = "holder",
    ) -> None:
        """A billing activation: the tenure opening plus the links the rules derive from it."""
        for t, v in (("msisdn", msisdn), ("iccid", iccid)):
            self._row(kind="opens", a_type=t, a_value=v, valid_from=T0 + timedelta(days=day))
        self.link("line_sim", f"msisdn:{msisdn}", f"iccid:{iccid}", day)
        rule = "individual_holder" if account_type == "individual" else "account_line"
        self.link(
            rule,
            f"msisdn:{msisdn}",
            f"account_id:{account}",
            day,
            role=role,
            account_type=account_type,
        )

    def deactivate(self, msisdn: str, iccid: str, day: float) -> None:
        for t, v in (("msisdn", msisdn), ("iccid", iccid)):
            self._row(kind="closes", a_type=t, a_value=v, valid_to=T0 + timedelta(days=day))

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, EVIDENCE_SCHEMA)


@pytest.fixture
def cfg(settings: Settings) -> IdentityCfg:
    return settings.identity


def person_of(res: Resolution, id_type: str, value: str) -> set[str]:
    nodes = res.nodes
    hit = nodes.filter(
        pc.and_(
            pc.equal(nodes.column("id_type"), id_type), pc.equal(nodes.column("id_value"), value)
        )
    )
    return set(hit.column("person_id").to_pylist())


def one(ids: set[str]) -> str:
    assert len(ids) == 1, ids
    return next(iter(ids))


def link_status(res: Resolution, rule: str) -> list[tuple[str, str | None]]:
    links = res.links.filter(pc.equal(res.links.column("rule"), rule))
    return list(
        zip(links.column("status").to_pylist(), links.column("reason").to_pylist(), strict=True)
    )


def test_one_person_from_line_app_and_contacts(cfg: IdentityCfg) -> None:
    f = Feed()
    f.activate("998901111111", "89998010000000000011", "AC1", 0)
    f.link("app_login_line", "app_user_id:u1", "msisdn:998901111111", 1)
    f.link("crm_passport", "passport:AA1234567", "msisdn:998901111111", 1)
    f.link("crm_email", "email:ali@mail.uz", "msisdn:998901111111", 1)
    res = resolve(f.table(), cfg)
    pid = one(person_of(res, "msisdn", "998901111111"))
    for t, v in (
        ("iccid", "89998010000000000011"),
        ("account_id", "AC1"),
        ("app_user_id", "u1"),
        ("passport", "AA1234567"),
        ("email", "ali@mail.uz"),
    ):
        assert person_of(res, t, v) == {pid}
    # The id derives from the identifier seen first: the activation showed the MSISDN and the
    # ICCID together, and a tie goes to the smaller node key (the ICCID).
    founding = res.nodes.filter(pc.equal(res.nodes.column("id_type"), "iccid"))
    assert pid == person_id_of(founding.column("node_key")[0].as_py())


def test_recycled_number_second_owner_is_a_new_person(cfg: IdentityCfg) -> None:
    f = Feed()
    f.activate("998902222222", "89998010000000000022", "AC1", 0)
    f.link("app_login_line", "app_user_id:first", "msisdn:998902222222", 1)
    f.deactivate("998902222222", "89998010000000000022", 5)
    f.activate("998902222222", "89998010000000000099", "AC2", 9)
    f.link("app_login_line", "app_user_id:second", "msisdn:998902222222", 10)
    res = resolve(f.table(), cfg)
    first, second = (
        one(person_of(res, "app_user_id", "first")),
        one(person_of(res, "app_user_id", "second")),
    )
    assert first != second
    assert person_of(res, "msisdn", "998902222222") == {first, second}
    tenures = res.nodes.filter(pc.equal(res.nodes.column("id_type"), "msisdn")).sort_by("tenure")
    assert tenures.column("valid_to")[0].as_py() == T0 + timedelta(days=5)  # closed
    assert tenures.column("valid_to")[1].as_py() is None  # still open
    assert person_of(res, "account_id", "AC2") == {second}


def test_reactivation_without_deactivation_closes_the_previous_tenure(cfg: IdentityCfg) -> None:
    """Billing never sent the deactivation: the new activation ends the old tenure anyway, and
    the number never has two open tenures."""
    f = Feed()
    f.activate("998903333333", "89998010000000000033", "AC1", 0)
    f.link("app_login_line", "app_user_id:old", "msisdn:998903333333", 1)
    f.activate("998903333333", "89998010000000000034", "AC2", 20)
    f.link("app_login_line", "app_user_id:new", "msisdn:998903333333", 21)
    res = resolve(f.table(), cfg)
    assert one(person_of(res, "app_user_id", "old")) != one(person_of(res, "app_user_id", "new"))
    tenures = res.nodes.filter(pc.equal(res.nodes.column("id_type"), "msisdn")).sort_by("tenure")
    ended = T0 + timedelta(days=20) - timedelta(microseconds=1)  # just before the new one
    assert tenures.column("valid_to").to_pylist() == [ended, None]


def test_family_lines_never_merge_even_through_a_shared_email(cfg: IdentityCfg) -> None:
    f = Feed()
    f.activate("998903000001", "89998010000000000031", "FAM", 0, "family", "holder")
    f.activate("998903000002", "89998010000000000032", "FAM", 0, "family", "member")
    f.link("crm_email", "email:home@mail.uz", "msisdn:998903000001", 1)
    f.link("app_login_line", "app_user_id:kid", "msisdn:998903000002", 2)
    f.link("app_login_email", "email:home@mail.uz", "app_user_id:kid", 2)  # the household email
    res = resolve(f.table(), cfg)
    holder, member = (
        person_of(res, "msisdn", "998903000001"),
        person_of(res, "msisdn", "998903000002"),
    )
    assert holder != member
    assert person_of(res, "email", "home@mail.uz") == holder
    ((status, reason),) = link_status(res, "app_login_email")
    # the CRM record makes it the holder's; the member's login cannot take it
    assert status == "refused"
    assert "home@mail.uz belongs to another person by stronger evidence" in (reason or "")
    accounts = account_view(res.links, res.nodes).to_pylist()
    assert accounts[0]["account_id"] == "FAM"
    assert accounts[0]["holder_person_id"] == one(holder)
    assert set(accounts[0]["member_person_ids"]) == holder | member


def test_an_email_two_account_holders_share_is_a_contact_not_a_key(cfg: IdentityCfg) -> None:
    """Two adults on separate individual accounts give the CRM one household email: they stay
    two persons, and the email is nobody's key."""
    f = Feed()
    f.activate("998904000001", "89998010000000000041", "AC41", 0)
    f.activate("998904000002", "89998010000000000042", "AC42", 0)
    f.link("crm_passport", "passport:AA4000001", "msisdn:998904000001", 1)
    f.link("crm_passport", "passport:AA4000002", "msisdn:998904000002", 1)
    for n in ("1", "2"):
        f.link("crm_email", "email:karimovs@mail.uz", f"msisdn:99890400000{n}", 1)
    res = resolve(f.table(), cfg)
    a, b = (one(person_of(res, "msisdn", f"99890400000{n}")) for n in ("1", "2"))
    assert a != b
    assert person_of(res, "email", "karimovs@mail.uz") == set()
    assert {s for s, _ in link_status(res, "crm_email")} == {"contact"}
    assert "used by 2 persons" in (link_status(res, "crm_email")[0][1] or "")


def test_a_value_on_too_many_lines_is_junk_and_links_nothing(cfg: IdentityCfg) -> None:
    """A shop typed its own email on seven customers' contracts (limit 6): flagged as junk
    automatically, it merges no one."""
    f = Feed()
    for n in range(7):
        f.activate(f"99890500000{n}", f"8999801000000000005{n}", f"AC5{n}", 0)
        f.link("crm_email", "email:shop@dealer.uz", f"msisdn:99890500000{n}", 1)
    res = resolve(f.table(), cfg)
    assert len({one(person_of(res, "msisdn", f"99890500000{n}")) for n in range(7)}) == 7
    statuses = link_status(res, "crm_email")
    assert {s for s, _ in statuses} == {"refused"}
    assert "is on 7 lines and accounts" in (statuses[0][1] or "")
    assert person_of(res, "email", "shop@dealer.uz") == set()


def test_a_crm_record_naming_no_line_links_through_passport_and_account(
    cfg: IdentityCfg,
) -> None:
    f = Feed()
    f.activate("998906000001", "89998010000000000061", "AC61", 0)
    f.link("crm_passport_account", "passport:AB6000001", "account_id:AC61", 1)
    f.link("crm_email_passport", "email:dilnoza@mail.uz", "passport:AB6000001", 1)
    res = resolve(f.table(), cfg)
    pid = one(person_of(res, "msisdn", "998906000001"))
    assert person_of(res, "passport", "AB6000001") == person_of(res, "email", "dilnoza@mail.uz")
    assert person_of(res, "passport", "AB6000001") == {pid}


def test_a_new_app_user_right_after_a_sim_swap_is_not_merged(cfg: IdentityCfg) -> None:
    """SIM-swap takeover: a stranger's app user logs in a few hours after the swap: refused and
    reported; the owner's own app user, known before the swap, still counts."""
    f = Feed()
    f.activate("998907000001", "89998010000000000071", "AC71", 0)
    f.link("app_login_line", "app_user_id:owner", "msisdn:998907000001", 1)
    f.link("sim_swap", "msisdn:998907000001", "iccid:89998010000000000079", 5)
    f._row(kind="opens", a_type="iccid", a_value="89998010000000000079",
           valid_from=T0 + timedelta(days=5))  # fmt: skip
    f.link("app_login_line", "app_user_id:stranger", "msisdn:998907000001", 5.2)
    f.link("app_login_line", "app_user_id:owner", "msisdn:998907000001", 5.3)
    f.link("app_login_line", "app_user_id:later", "msisdn:998907000001", 9)  # after the window
    res = resolve(f.table(), cfg)
    victim = one(person_of(res, "msisdn", "998907000001"))
    assert person_of(res, "app_user_id", "owner") == {victim}
    assert person_of(res, "app_user_id", "later") == {victim}
    assert person_of(res, "app_user_id", "stranger") != {victim}
    refused = res.links.filter(pc.equal(res.links.column("reason_code"), "sim_swap_guard"))
    assert refused.column("a_value").to_pylist() == ["stranger"]
    assert "4.8 h after its SIM swap" in refused.column("reason")[0].as_py()


def test_second_passport_is_refused_with_the_guardrail_named(cfg: IdentityCfg) -> None:
    f = Feed()
    f.activate("998904444444", "89998010000000000044", "AC4", 0)
    f.link("crm_passport", "passport:AA1111111", "msisdn:998904444444", 1)
    f.link("crm_passport", "passport:AB2222222", "msisdn:998904444444", 2)
    res = resolve(f.table(), cfg)
    statuses = link_status(res, "crm_passport")
    assert statuses[0] == ("accepted", None)
    assert statuses[1][0] == "refused"
    assert "guardrails.max_per_person.passport" in (statuses[1][1] or "")
    assert person_of(res, "passport", "AB2222222") != person_of(res, "msisdn", "998904444444")


def test_blocked_value_links_nothing(cfg: IdentityCfg) -> None:
    f = Feed()
    f.activate("998905000001", "89998010000000000051", "AC5", 0)
    f.activate("998905000002", "89998010000000000052", "AC6", 0)
    for n in ("998905000001", "998905000002"):
        f.link("app_login_line", "app_user_id:demo", f"msisdn:{n}", 1)  # the shop's demo login
    res = resolve(f.table(), cfg)
    assert person_of(res, "msisdn", "998905000001") != person_of(res, "msisdn", "998905000002")
    assert person_of(res, "app_user_id", "demo") == set()
    assert {s for s, _ in link_status(res, "app_login_line")} == {"refused"}
    assert all("blocked" in (r or "") for _, r in link_status(res, "app_login_line"))


def test_merge_keeps_the_older_id_and_is_recorded_with_its_link(cfg: IdentityCfg) -> None:
    f = Feed()
    f.activate("998906000001", "89998010000000000061", "AC7", 0)
    f.link("app_login_line", "app_user_id:u7", "msisdn:998906000001", 1)
    f.link("app_login_email", "email:x@mail.uz", "app_user_id:u8", 1)  # someone seen via the app
    before = resolve(f.table(), cfg)
    older = one(person_of(before, "msisdn", "998906000001"))
    younger = one(person_of(before, "app_user_id", "u8"))
    assert older != younger
    f.link("crm_email", "email:x@mail.uz", "msisdn:998906000001", 3)  # CRM ties them together
    after = resolve(f.table(), cfg)
    assert person_of(after, "app_user_id", "u8") == {older}
    changes = person_changes(before.nodes, after, version=1).to_pylist()
    assert [(c["change"], c["from_person_id"], c["to_person_id"]) for c in changes] == [
        ("merge", younger, older)
    ]
    assert changes[0]["link_rule"] == "crm_email"


def test_late_activation_splits_and_the_earliest_side_keeps_the_id(cfg: IdentityCfg) -> None:
    f = Feed()
    f.activate("998907000001", "89998010000000000071", "AC8", 0)
    f.link("app_login_line", "app_user_id:old_owner", "msisdn:998907000001", 1)
    # The number was deactivated and reissued, but billing's events for it arrive late: the new
    # owner's login is first attributed to the old tenure.
    f.link("app_login_line", "app_user_id:new_owner", "msisdn:998907000001", 12)
    before = resolve(f.table(), cfg)
    merged = one(person_of(before, "app_user_id", "new_owner"))
    assert person_of(before, "app_user_id", "old_owner") == {merged}
    f.deactivate("998907000001", "89998010000000000071", 5)
    f.activate("998907000001", "89998010000000000079", "AC9", 9)
    after = resolve(f.table(), cfg)
    assert person_of(after, "app_user_id", "old_owner") == {merged}  # holds the earliest node
    new_owner = one(person_of(after, "app_user_id", "new_owner"))
    assert new_owner != merged
    changes = person_changes(before.nodes, after, version=2).to_pylist()
    assert ("split", merged, new_owner) in [
        (c["change"], c["from_person_id"], c["to_person_id"]) for c in changes
    ]


def test_rule_change_blocking_a_value_splits_the_person(cfg: IdentityCfg) -> None:
    f = Feed()
    f.activate("998908000001", "89998010000000000081", "AC10", 0)
    f.link("app_login_line", "app_user_id:shared", "msisdn:998908000001", 1)
    f.activate("998908000002", "89998010000000000082", "AC11", 2)
    f.link("app_login_line", "app_user_id:shared", "msisdn:998908000002", 3)
    before = resolve(f.table(), cfg)
    pid = one(person_of(before, "msisdn", "998908000001"))
    assert person_of(before, "msisdn", "998908000002") == {pid}
    stricter = cfg.model_copy(
        update={"blocked": cfg.blocked.model_copy(update={"values": {"app_user_id": ["shared"]}})}
    )
    after = resolve(f.table(), stricter)
    assert person_of(after, "msisdn", "998908000001") == {pid}  # the earliest side keeps it
    other = one(person_of(after, "msisdn", "998908000002"))
    assert other != pid
    changes = person_changes(before.nodes, after, version=3).to_pylist()
    assert [(c["change"], c["from_person_id"], c["to_person_id"]) for c in changes] == [
        ("split", pid, other)
    ]


def test_regions_ignore_tenures_and_refusals_but_not_blocked_values(cfg: IdentityCfg) -> None:
    f = Feed()
    f.activate("998909000001", "89998010000000000091", "FAM2", 0, "family", "holder")
    f.activate("998909000002", "89998010000000000092", "FAM2", 0, "family", "member")
    f.link("app_login_line", "app_user_id:demo", "msisdn:998909000001", 1)
    regions = regions_of(f.table(), Blocklist(cfg))
    kinds = f.table().column("kind").to_pylist()
    # Member rows stay in their line's region; the blocked login is anchored on the line; a
    # region is named after its first-seen value (the first activation's MSISDN).
    assert regions[-1] == regions[0] == "msisdn:998909000001"
    assert len(set(regions)) == 2
    assert kinds.count("member") == 2
