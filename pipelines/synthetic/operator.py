"""Synthetic mobile operator: landing files for every source, plus a ground truth that the
pipeline never reads.

It models what makes a real operator hard: individual, family and corporate accounts; people with
several lines, passports, emails and app accounts; household emails shared by family members; MSISDN
recycling, SIM swaps and port-outs; consent given and withdrawn; late events; and a known share of
records that break the source contracts in each of the ways silver must catch. Output is
deterministic for a given seed. See docs/generator.md for the model and the truth files.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import CountryCfg, GeneratorCfg

TASHKENT = timezone(timedelta(hours=5))
SOURCES = ("billing", "crm", "network", "app")
FIRST_NAMES = [
    "Aziz",
    "Dilnoza",
    "Jasur",
    "Madina",
    "Otabek",
    "Nilufar",
    "Sardor",
    "Gulnora",
    "Bekzod",
    "Shahnoza",
    "Timur",
    "Malika",
    "Rustam",
    "Zarina",
    "Farrukh",
    "Kamola",
]
LAST_NAMES = [
    "Karimov",
    "Rashidova",
    "Tursunov",
    "Yusupova",
    "Aliyev",
    "Nazarova",
    "Umarov",
    "Saidova",
    "Ismoilov",
    "Qodirova",
    "Ergashev",
    "Xolmatova",
]
REGIONS = [
    "Tashkent",
    "Samarkand",
    "Bukhara",
    "Fergana",
    "Andijan",
    "Namangan",
    "Khorezm",
    "Navoi",
    "Kashkadarya",
    "Surkhandarya",
    "Jizzakh",
    "Syrdarya",
    "Karakalpakstan",
]
# What mediation reports for a line attached to a partner network abroad (a trip, or a phone near
# the border picking a foreign cell for a while).
ROAMING_REGIONS = ["Roaming Kazakhstan", "Roaming Russia", "Roaming Turkey"]
MAIL_DOMAINS = ["mail.uz", "gmail.com", "yandex.ru", "inbox.uz"]
# id, name, monthly fee, data bundle (GB per calendar month), kind, minimum term (months; "" none)
TARIFFS = [
    ("T-MINI", "Mini", "29000.00", 3.0, "prepaid", ""),
    ("T-START", "Start", "49000.00", 10.0, "prepaid", ""),
    ("T-PLUS", "Plus", "79000.00", 25.0, "postpaid", "12"),
    ("T-MAX", "Max", "129000.00", 60.0, "postpaid", "12"),
    ("T-FAMILY", "Family", "99000.00", 40.0, "postpaid", "24"),
    ("T-CORP", "Business", "89000.00", 30.0, "postpaid", "12"),
]
# What people type when an app insists on an email (the identity conf lists them as junk).
JUNK_LOGIN_EMAILS = ["a@a.a", "x@x.x", "test@test.com", "no@email.com", "1@1.ru"]
BAD_KINDS = (
    "bad_json",
    "missing_field",
    "wrong_type",
    "unknown_event_type",
    "unknown_schema_version",
    "future_event_time",
    "duplicate",
    "junk_identifier",
    "schema_drift",
)


@dataclass
class Person:
    key: str
    first_name: str
    last_name: str
    passport: str | None
    email: str | None
    app_user_id: str | None
    language: str
    platform: str
    shared_email: str | None = None  # a family member using the holder's email in the app
    # A contact that is not theirs alone: a household email of two account holders, or a shop's
    # email typed on many customers' contracts. It is never a person key (the truth leaves it
    # out of the person's identifiers).
    contact_email: str | None = None
    login_email: str | None = None  # what they type at app login, when not their email (junk)
    crm_names_line: bool = True  # False: their CRM record carries passport and account only
    situations: set[str] = field(default_factory=set)  # identity situations they are part of


@dataclass
class Account:
    account_id: str
    type: str
    holder: str  # person key of the paying holder (corporate: none of the lines' users)
    company: str | None = None


@dataclass
class Line:
    msisdn: str
    iccid: str
    person: str
    account_id: str
    role: str
    tariff_id: str
    start: datetime
    end: datetime | None = None
    end_reason: str | None = None
    balance: int = 0  # in tiyin (1/100 UZS) to keep money exact
    swaps: list[tuple[datetime, str]] = field(default_factory=list)
    opened_by: str = "activation"  # or ownership_change (the line passed to a new holder)
    end_reported: bool = True  # False: billing never sends the deactivation
    end_late_by: timedelta | None = None  # the deactivation arrives this long after it happened
    takeover: tuple[datetime, str] | None = None  # a stranger's login after a SIM swap (person)


@dataclass
class Event:
    source: str
    event_type: str
    ts: datetime
    payload: dict[str, object]
    person: str | None
    event_id: str = ""
    arrival: datetime | None = None
    late_by: timedelta | None = None  # a delivery delay fixed by the scenario


@dataclass
class Summary:
    persons: int
    accounts: int
    lines: int
    events: int
    bad_records: dict[str, int]
    files: dict[str, int]
    landing_root: Path
    truth_root: Path


class Operator:
    """Builds the population and its timeline, then writes landing files and truth."""

    def __init__(self, cfg: GeneratorCfg, country: CountryCfg) -> None:
        self.cfg = cfg
        self.country = country
        self.rng = random.Random(cfg.seed)
        self.start = datetime.fromisoformat(cfg.start_date).replace(tzinfo=UTC)
        self.end = self.start + timedelta(days=cfg.days)
        self.persons: dict[str, Person] = {}
        self.accounts: dict[str, Account] = {}
        self.lines: list[Line] = []
        self.events: list[Event] = []
        self._used_msisdn: set[str] = set()
        self._seq: dict[str, int] = dict.fromkeys(SOURCES, 0)
        self._n = {"person": 0, "account": 0, "iccid": 0, "case": 0, "session": 0}

    # ------------------------------------------------------------ identifiers

    def _next(self, kind: str) -> int:
        self._n[kind] += 1
        return self._n[kind]

    def new_msisdn(self) -> str:
        while True:
            prefix = self.rng.choice(self.country.mobile_prefixes)
            rest = self.country.national_number_length - len(prefix)
            number = prefix + "".join(str(self.rng.randrange(10)) for _ in range(rest))
            if number not in self._used_msisdn and len(set(number[len(prefix) :])) > 2:
                self._used_msisdn.add(number)
                return self.country.calling_code + number

    def new_iccid(self) -> str:
        body = f"89{self.country.calling_code}01{self._next('iccid'):011d}"
        return body + _luhn_digit(body)

    def new_person(
        self,
        *,
        passport: bool = True,
        email_share: float = 0.7,
        app_share: float = 0.55,
        company: str | None = None,
    ) -> Person:
        n = self._next("person")
        first, last = self.rng.choice(FIRST_NAMES), self.rng.choice(LAST_NAMES)
        email = None
        if self.rng.random() < email_share:
            domain = f"{company}.uz" if company else self.rng.choice(MAIL_DOMAINS)
            email = f"{first}.{last}{n}@{domain}".lower()
        p = Person(
            key=f"P{n:07d}",
            first_name=first,
            last_name=last,
            passport=f"A{chr(65 + n % 26)}{n:07d}" if passport else None,
            email=email,
            app_user_id=f"u{self.rng.getrandbits(40):010x}"
            if self.rng.random() < app_share
            else None,
            language=self.rng.choices(["uz", "ru", "en"], [6, 3, 1])[0],
            platform=self.rng.choices(["android", "ios", "web"], [7, 2, 1])[0],
        )
        self.persons[p.key] = p
        return p

    def new_account(self, type_: str, holder: Person, company: str | None = None) -> Account:
        a = Account(f"AC{self._next('account'):08d}", type_, holder.key, company)
        self.accounts[a.account_id] = a
        return a

    def past_start(self) -> datetime:
        """An activation time before the simulated window (lines that already exist)."""
        return self.start - timedelta(
            days=self.rng.randint(30, 1500), seconds=self.rng.randint(0, 86399)
        )

    def add_line(
        self,
        person: Person,
        account: Account,
        role: str,
        tariff: str,
        start: datetime | None = None,
    ) -> Line:
        line = Line(
            self.new_msisdn(),
            self.new_iccid(),
            person.key,
            account.account_id,
            role,
            tariff,
            start or self.past_start(),
            balance=self.rng.randint(0, 50_000) * 100,
        )
        self.lines.append(line)
        return line

    # ------------------------------------------------------------ population

    def build_population(self) -> None:
        cfg, rng = self.cfg, self.rng
        target = cfg.subscribers
        corporate_lines = int(target * cfg.corporate_account_share)
        made = 0
        corp_no = 0
        while corporate_lines - made >= 10:
            corp_no += 1
            size = min(corporate_lines - made, rng.randint(10, max(10, min(2000, target // 20))))
            company = f"corp{corp_no}"
            contact = self.new_person(
                passport=False, email_share=1.0, app_share=0.0, company=company
            )
            del self.persons[contact.key]  # the account contact is not one of its lines' users
            acc = self.new_account("corporate", contact, company=company)
            for _ in range(size):
                user = self.new_person(
                    passport=False, email_share=0.8, app_share=0.4, company=company
                )
                self.add_line(user, acc, "member", "T-CORP")
            made += size
        while made < target:
            if rng.random() < cfg.family_account_share and target - made >= 2:
                size = min(rng.randint(2, 6), target - made)
                holder = self.new_person()
                acc = self.new_account("family", holder)
                self.add_line(holder, acc, "holder", "T-FAMILY")
                for _ in range(size - 1):
                    member = self.new_person(passport=rng.random() < 0.5, email_share=0.5)
                    self.add_line(member, acc, "member", "T-FAMILY")
                    if holder.email and member.email is None and rng.random() < 0.3:
                        member.shared_email = holder.email  # the household's one email
                made += size
            else:
                kyc = rng.random() >= cfg.situations.prepaid_no_kyc
                person = self.new_person(passport=kyc, email_share=0.7 if kyc else 0.0)
                acc = self.new_account("individual", person)
                tariff = rng.choice(["T-MINI", "T-START", "T-PLUS", "T-MAX"])
                if not kyc:  # a prepaid SIM sold without identification
                    person.situations.add("prepaid_no_kyc")
                    tariff = rng.choice(["T-MINI", "T-START"])
                self.add_line(person, acc, "holder", tariff)
                made += 1
                if rng.random() < cfg.multi_line_person_share and made < target:
                    self.add_line(person, acc, "holder", rng.choice(["T-MINI", "T-START"]))
                    made += 1
                if kyc and rng.random() < cfg.situations.two_accounts and made < target:
                    # A second contract of their own (e.g. a business line), same passport.
                    second = self.new_account("individual", person)
                    self.add_line(person, second, "holder", rng.choice(["T-PLUS", "T-MAX"]))
                    person.situations.add("two_accounts")
                    made += 1

    def plan_contacts(self) -> None:
        """Contacts that are not one person's: household emails of two account holders, a shop's
        email on many contracts, placeholder emails typed at login, CRM records naming no line."""
        rng, sit = self.rng, self.cfg.situations
        holders = [
            self.persons[a.holder]
            for a in self.accounts.values()
            if a.type == "individual" and self.persons[a.holder].passport
        ]
        rng.shuffle(holders)
        n_pairs = int(len(holders) * sit.household_email / 2)
        for i in range(n_pairs):
            a, b = holders[2 * i], holders[2 * i + 1]
            email = f"{a.last_name.lower()}.home{i + 1}@{rng.choice(MAIL_DOMAINS)}"
            for p in (a, b):
                p.email, p.contact_email = None, email
                p.situations.add("household_email")
        rest = holders[2 * n_pairs :]
        # Groups of eight customers per shop: more lines than a person's email is ever on.
        shop_holders = rest[: int(len(holders) * sit.shop_email) // 8 * 8]
        for i in range(0, len(shop_holders), 8):
            email = f"shop{i // 8 + 1}@dealer-{rng.randint(1, 99)}.uz"
            for p in shop_holders[i : i + 8]:
                p.email, p.contact_email = None, email
                p.situations.add("shop_email")
        for p in rest[len(shop_holders) :]:
            if rng.random() < sit.passport_only_crm:
                p.crm_names_line = False
                p.situations.add("passport_only_crm")
        for p in self.persons.values():
            if p.app_user_id and rng.random() < sit.junk_email:
                p.login_email = rng.choice(JUNK_LOGIN_EMAILS)
                p.situations.add("junk_email")

    def plan_lifecycle(self) -> None:
        """Recycling (some deactivations never sent, some late), port-outs and port-ins,
        changes of holder without a deactivation, SIM swaps and takeovers inside the window."""
        existing = list(self.lines)
        self._plan_recycling(existing)
        self._plan_port_outs(existing)
        self._plan_ownership_changes(existing)
        self._plan_sim_swaps(existing)

    def _plan_recycling(self, existing: list[Line]) -> None:
        """Numbers deactivated in the window and reissued to a newcomer after the quarantine."""
        cfg, rng, sit = self.cfg, self.rng, self.cfg.situations
        window = cfg.days
        q = cfg.recycle_quarantine_days
        if window > q + 2:
            for line in rng.sample(existing, int(len(existing) * cfg.recycle_share)):
                if line.end is not None:
                    continue
                day = rng.randint(1, window - q - 2)
                line.end = self.start + timedelta(days=day, seconds=rng.randint(0, 86399))
                line.end_reason = rng.choice(["customer_request", "non_payment"])
                newcomer = self.new_person()
                acc = self.new_account("individual", newcomer)
                reissue = line.end + timedelta(
                    days=q + rng.randint(0, 1), seconds=rng.randint(0, 3600)
                )
                if reissue >= self.end:
                    continue
                tags = {"recycled"}
                r = rng.random()
                if r < sit.unreported_deactivation:
                    line.end_reported = False
                    tags.add("unreported_deactivation")
                elif r < sit.unreported_deactivation + sit.late_deactivation:
                    line.end_late_by = reissue - line.end + timedelta(hours=rng.uniform(2, 30))
                    tags.add("late_deactivation")
                self._reissue(line, newcomer, acc, reissue, tags)

    def _plan_port_outs(self, existing: list[Line]) -> None:
        """Numbers ported out; some come back (port-in) to a new holder."""
        cfg, rng, sit = self.cfg, self.rng, self.cfg.situations
        window = cfg.days
        for line in rng.sample(existing, int(len(existing) * cfg.port_out_share)):
            if line.end is None:
                line.end = self.start + timedelta(
                    days=rng.randint(1, window - 1), seconds=rng.randint(0, 86399)
                )
                line.end_reason = "port_out"
                # Whole seconds, as billing stamps them (a tenure starts at its event's time).
                back = (line.end + timedelta(days=rng.uniform(2, 6))).replace(microsecond=0)
                if back < self.end and rng.random() < sit.port_in:
                    newcomer = self.new_person()
                    acc = self.new_account("individual", newcomer)
                    self._reissue(line, newcomer, acc, back, {"port_in"})

    def _plan_ownership_changes(self, existing: list[Line]) -> None:
        """Lines handed to someone else without a deactivation (an employee, a new holder)."""
        rng, sit, window = self.rng, self.cfg.situations, self.cfg.days
        for line in rng.sample(existing, int(len(existing) * sit.ownership_change)):
            if line.end is not None or line.swaps:
                continue
            at = (self.start + timedelta(days=rng.uniform(0.5, window - 1))).replace(microsecond=0)
            acc = self.accounts[line.account_id]
            if acc.type == "corporate":  # the company hands the line to a new employee
                newcomer = self.new_person(
                    passport=False, email_share=0.8, app_share=0.4, company=acc.company
                )
                new_acc, role = acc, "member"
            else:  # the holder transfers the contract to someone else
                newcomer = self.new_person()
                new_acc, role = self.new_account("individual", newcomer), "holder"
            line.end, line.end_reason, line.end_reported = at, "ownership_change", False
            new_line = Line(
                line.msisdn,
                line.iccid,
                newcomer.key,
                new_acc.account_id,
                role,
                line.tariff_id,
                at,
                opened_by="ownership_change",
            )
            self.lines.append(new_line)
            for p in (self.persons[line.person], newcomer):
                p.situations.add("ownership_change")

    def _plan_sim_swaps(self, existing: list[Line]) -> None:
        """SIM swaps by the holder, and takeovers: a fraudster's swap then their app login."""
        cfg, rng, sit, window = self.cfg, self.rng, self.cfg.situations, self.cfg.days
        for line in rng.sample(existing, int(len(existing) * cfg.sim_swap_share)):
            at = self.start + timedelta(days=rng.uniform(0.5, window - 0.5))
            if line.end is None or at < line.end:
                line.swaps.append((at, self.new_iccid()))
                self.persons[line.person].situations.add("sim_swap")
        victims = [ln for ln in existing if ln.end is None and self.persons[ln.person].app_user_id]
        for line in rng.sample(victims, int(len(existing) * sit.sim_swap_takeover)):
            if line.swaps:
                continue
            at = self.start + timedelta(days=rng.uniform(0.5, window - 1.5))
            line.swaps.append((at, self.new_iccid()))
            # A fraudster ported the number to their SIM and logs in with an app user of theirs.
            fraudster = self.new_person(passport=False, email_share=1.0, app_share=1.0)
            line.takeover = (at + timedelta(hours=rng.uniform(0.5, 20)), fraudster.key)
            for p in (self.persons[line.person], fraudster):
                p.situations.add("sim_swap_takeover")

    def _reissue(
        self, line: Line, newcomer: Person, acc: Account, at: datetime, tags: set[str]
    ) -> None:
        """The number `line` held starts a new tenure for `newcomer` on a new SIM at `at`."""
        self.lines.append(
            Line(
                line.msisdn,
                self.new_iccid(),
                newcomer.key,
                acc.account_id,
                "holder",
                self.rng.choice(["T-MINI", "T-START"]),
                at,
                balance=0,
            )
        )
        for p in (self.persons[line.person], newcomer):
            p.situations.update(tags)

    # ------------------------------------------------------------ events

    def emit(
        self, source: str, event_type: str, ts: datetime, person: str | None, **payload: object
    ) -> Event:
        e = Event(
            source, event_type, ts, {k: v for k, v in payload.items() if v is not None}, person
        )
        self.events.append(e)
        return e

    def contact_update(
        self,
        person: Person,
        account_id: str,
        msisdn: str,
        ts: datetime,
        language: str | None = None,
    ) -> Event:
        """CRM contact details of a person, against an account and (unless their record names
        none) one of its lines."""
        return self.emit(
            "crm",
            "customer_update",
            ts,
            person.key,
            account_id=account_id,
            account_type=self.accounts[account_id].type,
            msisdn=msisdn if person.crm_names_line else None,
            passport=person.passport,
            email=person.email or person.contact_email,
            first_name=person.first_name,
            last_name=person.last_name,
            preferred_language=language,
        )

    def case_event(
        self, line: Line, ts: datetime, case_id: str, category: str, status: str
    ) -> Event:
        """A service case opened or closed by the line's user (the category stays with the case)."""
        return self.emit(
            "crm",
            "case",
            ts,
            line.person,
            case_id=case_id,
            account_id=line.account_id,
            msisdn=line.msisdn,
            category=category,
            status=status,
        )

    def lifecycle_events(self) -> None:
        rng = self.rng
        for acc in self.accounts.values():
            holder = self.persons.get(acc.holder)
            first_line = next(ln for ln in self.lines if ln.account_id == acc.account_id)
            ts = first_line.start + timedelta(minutes=rng.randint(1, 120))
            if acc.type == "corporate":
                self.emit(
                    "crm",
                    "customer_update",
                    ts,
                    None,
                    account_id=acc.account_id,
                    first_name=f"{acc.company.upper() if acc.company else ''} LLC",
                )
            elif holder is not None:
                self.contact_update(holder, acc.account_id, first_line.msisdn, ts, holder.language)
        for line in self.lines:
            acc = self.accounts[line.account_id]
            self.emit(
                "billing",
                line.opened_by,  # activation, or ownership_change: no deactivation before it
                line.start,
                line.person,
                msisdn=line.msisdn,
                iccid=line.iccid,
                account_id=line.account_id,
                account_type=acc.type,
                line_role=line.role,
                tariff_id=line.tariff_id,
            )
            user = self.persons[line.person]
            if acc.type == "family" and line.role == "member" and user.passport:
                # Members register their own passport against their line (not the account).
                self.contact_update(
                    user, line.account_id, line.msisdn, line.start + timedelta(hours=2)
                )
            iccid = line.iccid
            for at, new_iccid in line.swaps:
                self.emit(
                    "billing",
                    "sim_swap",
                    at,
                    line.person,
                    msisdn=line.msisdn,
                    iccid=new_iccid,
                    previous_iccid=iccid,
                    account_id=line.account_id,
                )
                iccid = new_iccid
            if line.takeover is not None:
                at, key = line.takeover
                fraudster = self.persons[key]
                self.emit(
                    "app",
                    "login",
                    at,
                    key,
                    app_user_id=fraudster.app_user_id,
                    msisdn=line.msisdn,
                    email=fraudster.email,
                    platform="android",
                )
            if line.end is not None and line.end_reported:
                ended = self.emit(
                    "billing",
                    "deactivation",
                    line.end,
                    line.person,
                    msisdn=line.msisdn,
                    iccid=iccid,
                    account_id=line.account_id,
                    reason=line.end_reason,
                )
                ended.late_by = line.end_late_by
            self._consents(line)

    def _consents(self, line: Line) -> None:
        rng = self.rng
        person = self.persons[line.person]
        base = max(line.start, self.start - timedelta(days=10)) + timedelta(hours=3)
        for purpose, share in (
            ("marketing", 0.6),
            ("profiling", 0.4),
            ("location", 0.3),
            ("third_party", 0.1),
        ):
            if rng.random() >= share:
                continue
            key = rng.choice(["msisdn", "msisdn", "email", "account_id"])
            ident: dict[str, object] = {"msisdn": line.msisdn}
            # By email only where the CRM knows it as theirs (an account holder's or a member's
            # own record): a consent keyed by an email nothing links is nobody's.
            crm_knows = self.accounts[line.account_id].type != "corporate" and (
                line.role == "holder" or person.passport is not None
            )
            if key == "email" and person.email and crm_knows:
                ident = {"email": person.email}
            elif key == "account_id" and self.accounts[line.account_id].type == "individual":
                ident = {"account_id": line.account_id}
            channel = rng.choice(["app", "web", "shop", "call_centre", "sms"])
            t = base + timedelta(minutes=rng.randint(0, 600))
            self.emit(
                "crm",
                "consent",
                t,
                line.person,
                purpose=purpose,
                granted=True,
                legal_basis="consent",
                channel=channel,
                **ident,
            )
            if rng.random() < 0.15:  # withdrawn inside the window, sometimes granted again
                t2 = self.start + timedelta(days=rng.uniform(0.5, self.cfg.days - 0.5))
                if line.end is None or t2 < line.end:
                    self.emit(
                        "crm",
                        "consent",
                        t2,
                        line.person,
                        purpose=purpose,
                        granted=False,
                        legal_basis="consent",
                        channel=channel,
                        **ident,
                    )
                    if rng.random() < 0.4:
                        t3 = t2 + timedelta(hours=rng.uniform(1, 72))
                        if t3 < self.end and (line.end is None or t3 < line.end):
                            self.emit(
                                "crm",
                                "consent",
                                t3,
                                line.person,
                                purpose=purpose,
                                granted=True,
                                legal_basis="consent",
                                channel=channel,
                                **ident,
                            )

    def usage_events(self, progress: Callable[[int], None]) -> None:
        """Daily traffic per active line: network, app, payments and service cases."""
        open_cases: dict[str, list[tuple[str, str]]] = {}
        for line in self.lines:
            self._line_usage(line, open_cases)
            progress(1)

    def _line_usage(self, line: Line, open_cases: dict[str, list[tuple[str, str]]]) -> None:
        """One line's days, each with a Poisson number of events at random times."""
        rng = self.rng
        home = rng.choice(REGIONS)
        logged_in = False
        begin = max(line.start, self.start)
        finish = min(line.end or self.end, self.end)
        day = begin
        while day < finish:
            n = _poisson(rng, self.cfg.events_per_subscriber_per_day)
            for _ in range(n):
                ts = day + timedelta(seconds=rng.randint(0, 86399))
                if ts < finish:
                    logged_in = self._usage_event(line, ts, home, logged_in, open_cases)
            day += timedelta(days=1)

    def _usage_event(
        self,
        line: Line,
        ts: datetime,
        home: str,
        logged_in: bool,
        open_cases: dict[str, list[tuple[str, str]]],
    ) -> bool:
        """One event of a line at `ts`, of a kind drawn by share; says whether the line's
        app user is logged in afterwards."""
        r = self.rng.random()
        person = self.persons[line.person]
        if r < 0.22:
            self._location(line, ts, home)
        elif r < 0.62:
            self._data_session(line, ts)
        elif r < 0.85 and person.app_user_id:
            return self._app_event(line, person, ts, logged_in)
        elif r < 0.95:
            self._payment(line, ts)
        else:
            self._case(line, ts, open_cases.setdefault(line.msisdn + line.person, []))
        return logged_in

    def _location(self, line: Line, ts: datetime, home: str) -> None:
        rng = self.rng
        r = rng.random()
        region = home if r < 0.85 else rng.choice(ROAMING_REGIONS if r > 0.995 else REGIONS)
        self.emit(
            "network",
            "location",
            ts,
            line.person,
            msisdn=line.msisdn,
            cell_id=f"{region[:3].upper()}-{rng.randint(1, 400):04d}",
            region=region,
        )

    def _data_session(self, line: Line, ts: datetime) -> None:
        rng = self.rng
        sid = f"s{self._next('session'):010d}"
        dur = rng.randint(30, 3600)
        if line.end is not None and ts + timedelta(seconds=dur) >= line.end:
            # deactivation tears the session down: it ends inside the tenure
            dur = max(int((line.end - ts).total_seconds()) - 1, 0)
        self.emit(
            "network", "data_session_start", ts, line.person, msisdn=line.msisdn, session_id=sid
        )
        self.emit(
            "network",
            "data_session_end",
            ts + timedelta(seconds=dur),
            line.person,
            msisdn=line.msisdn,
            session_id=sid,
            bytes_up=rng.randint(1_000, 20_000_000),
            bytes_down=rng.randint(10_000, 400_000_000),
            duration_s=dur,
        )

    def _app_event(self, line: Line, person: Person, ts: datetime, logged_in: bool) -> bool:
        """A login (first, or now and then again), an app open or an in-app action."""
        rng = self.rng
        if not logged_in or rng.random() < 0.05:
            self.emit(
                "app",
                "login",
                ts,
                line.person,
                app_user_id=person.app_user_id,
                msisdn=line.msisdn,
                email=person.login_email or person.email or person.shared_email,
                platform=person.platform,
            )
            return True
        if rng.random() < 0.6:
            self.emit(
                "app",
                "open",
                ts,
                line.person,
                app_user_id=person.app_user_id,
                platform=person.platform,
                msisdn=line.msisdn if rng.random() < 0.5 else None,
            )
        else:
            self.emit(
                "app",
                "in_app_action",
                ts,
                line.person,
                app_user_id=person.app_user_id,
                action=rng.choice(["view_balance", "buy_bundle", "change_tariff", "chat", "pay"]),
            )
        return True

    def _payment(self, line: Line, ts: datetime) -> None:
        rng = self.rng
        acc = self.accounts[line.account_id]
        if acc.type != "individual" and line.role == "member" and rng.random() < 0.7:
            return  # family/corporate members rarely pay themselves
        amount = rng.choice([10_000, 20_000, 30_000, 50_000, 100_000]) * 100
        line.balance += amount - rng.randint(0, amount // 2)
        self.emit(
            "billing",
            "payment",
            ts,
            line.person,
            msisdn=line.msisdn,
            account_id=line.account_id,
            amount=_money(amount),
            currency="UZS",
            balance_after=_money(line.balance),
            payment_channel=rng.choice(["card", "cash", "bank", "app", "voucher"]),
        )

    def _case(self, line: Line, ts: datetime, cases: list[tuple[str, str]]) -> None:
        """Closes one of the line's open cases, or opens one (half with a promise)."""
        rng = self.rng
        if cases and rng.random() < 0.5:
            case_id, category = cases.pop()
            self.case_event(line, ts, case_id, category, "closed")
            return
        case_id = f"CS{self._next('case'):08d}"
        category = rng.choice(["billing", "network", "device", "other"])
        cases.append((case_id, category))
        self.case_event(line, ts, case_id, category, "open")
        if rng.random() < 0.5:
            self.emit(
                "crm",
                "promise_to_resolve",
                ts + timedelta(minutes=5),
                line.person,
                case_id=case_id,
                account_id=line.account_id,
                msisdn=line.msisdn,
                due_ts=(ts + timedelta(days=rng.randint(1, 5))),
            )

    # ------------------------------------------------------------ output

    def assign_ids_and_arrival(self) -> None:
        rng = self.rng
        self.events.sort(key=lambda e: (e.ts, e.source, e.event_type))
        for e in self.events:
            self._seq[e.source] += 1
            e.event_id = f"{e.source[:3]}-{self._seq[e.source]:010d}"
            delay = timedelta(seconds=rng.randint(1, 120))
            if rng.random() < self.cfg.late_event_share:
                delay = timedelta(hours=rng.uniform(6, 72))
            if e.late_by is not None:
                delay = e.late_by
            e.arrival = max(e.ts, self.start) + delay


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method is fine for the small daily rates used here.
    limit, k, p = pow(2.718281828459045, -lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _money(tiyin: int) -> str:
    return f"{tiyin // 100}.{tiyin % 100:02d}"


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def _ts_text(source: str, ts: datetime) -> str:
    # Billing and CRM stamp local Tashkent time with its offset; network and app send UTC.
    if source in ("billing", "crm"):
        return ts.astimezone(TASHKENT).isoformat(timespec="milliseconds")
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_record(e: Event) -> dict[str, object]:
    rec: dict[str, object] = {
        "event_id": e.event_id,
        "source": e.source,
        "event_type": e.event_type,
        "event_ts": _ts_text(e.source, e.ts),
        "schema_version": 1,
    }
    for k, v in e.payload.items():
        rec[k] = _ts_text(e.source, v) if isinstance(v, datetime) else v
    return rec


@dataclass
class Line_:
    """One line of a landing file with what the truth knows about it."""

    text: str
    event_id: str
    kind: str  # "valid" or one of BAD_KINDS
    arrival: datetime
    event: Event


def _bad_variants(op: Operator, shares: dict[str, float]) -> Iterator[tuple[str, Event, str]]:
    """Extra lines that break the contract: (kind, event it was derived from, line text)."""
    for kind, events in _bad_samples(op, shares).items():
        for e in events:
            rec = event_record(e)
            if kind not in ("duplicate", "schema_drift"):
                rec["event_id"] = f"bad-{kind}-{e.event_id}"
            yield kind, e, BREAKERS.get(kind, _as_is)(rec, e, op.rng)


def _bad_samples(op: Operator, shares: dict[str, float]) -> dict[str, list[Event]]:
    """The events each kind of bad line is derived from (at least one when its share is set)."""
    candidates = [
        e
        for e in op.events
        if e.event_type
        not in ("activation", "deactivation", "sim_swap", "customer_update", "consent")
    ]
    by_kind: dict[str, list[Event]] = {}
    for kind in BAD_KINDS:
        count = int(round(len(op.events) * shares[kind]))
        if shares[kind] > 0:
            count = max(count, 1)
        by_kind[kind] = op.rng.sample(candidates, min(count, len(candidates)))
    return by_kind


def _dumps(rec: dict[str, Any]) -> str:
    return json.dumps(rec, separators=(",", ":"))


def _as_is(rec: dict[str, Any], e: Event, rng: random.Random) -> str:
    return _dumps(rec)


def _cut_short(rec: dict[str, Any], e: Event, rng: random.Random) -> str:
    text = _dumps(rec)
    return text[: rng.randint(10, len(text) - 5)]


def _missing_field(rec: dict[str, Any], e: Event, rng: random.Random) -> str:
    rec.pop(
        rng.choice(["event_ts", "event_type"])
        if rng.random() < 0.2
        else _required_payload_field(e),
        None,
    )
    return _dumps(rec)


def _wrong_type(rec: dict[str, Any], e: Event, rng: random.Random) -> str:
    numeric = [
        k for k in ("amount", "balance_after", "bytes_up", "bytes_down", "duration_s") if k in rec
    ]
    if numeric:
        rec[rng.choice(numeric)] = "abc"
    else:
        rec["event_ts"] = "yesterday"
    return _dumps(rec)


def _future_event_time(rec: dict[str, Any], e: Event, rng: random.Random) -> str:
    # Years ahead, so it is "future" whenever the files are ingested.
    future = (e.arrival or e.ts) + timedelta(days=rng.randint(3650, 4000))
    rec["event_ts"] = _ts_text(e.source, future)
    return _dumps(rec)


def _junk_identifier(rec: dict[str, Any], e: Event, rng: random.Random) -> str:
    if "msisdn" in rec:
        rec["msisdn"] = rng.choice(["000000000", "998000000000"])
    else:
        rec["msisdn"] = "000000000"
    if e.source == "app":
        rec["email"] = "test@test.com"
        rec["event_type"] = "login"
        rec.setdefault("platform", "android")
    return _dumps(rec)


def _schema_drift(rec: dict[str, Any], e: Event, rng: random.Random) -> str:
    rec["loyalty_tier"] = rng.choice(["gold", "silver", "bronze"])
    return _dumps(rec)


# How each kind of bad line is made from a valid record (duplicates stay as they are).
BREAKERS: dict[str, Callable[[dict[str, Any], Event, random.Random], str]] = {
    "bad_json": _cut_short,
    "missing_field": _missing_field,
    "wrong_type": _wrong_type,
    "unknown_event_type": lambda rec, e, rng: _dumps(rec | {"event_type": "teleport"}),
    "unknown_schema_version": lambda rec, e, rng: _dumps(rec | {"schema_version": 99}),
    "future_event_time": _future_event_time,
    "junk_identifier": _junk_identifier,
    "schema_drift": _schema_drift,
}


def _required_payload_field(e: Event) -> str:
    required = {
        "location": "msisdn",
        "data_session_start": "session_id",
        "data_session_end": "bytes_down",
        "payment": "amount",
        "case": "case_id",
        "promise_to_resolve": "due_ts",
        "open": "app_user_id",
        "in_app_action": "action",
        "login": "app_user_id",
        "tariff_change": "tariff_id",
    }
    return required.get(e.event_type, "event_id")


def generate(
    cfg: GeneratorCfg,
    country: CountryCfg,
    landing_root: Path,
    truth_root: Path,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    clean: bool = True,
) -> Summary:
    """Generate an operator and write landing files, reference files and the ground truth."""
    say = progress or (lambda step, done, total: None)
    op = _simulate(cfg, country, say)
    out = _lines_by_source(op, cfg.bad_records.model_dump())
    if clean:
        for d in (landing_root, truth_root):
            if d.exists():
                shutil.rmtree(d)
    files: dict[str, int] = {}
    truth_rows: list[dict[str, object]] = []
    for source, lines in out.items():
        files[source] = _write_landing(
            source, lines, cfg.files_per_source, landing_root, truth_rows
        )
        say(f"landing/{source}", 1, 1)
    write_reference(landing_root / "reference")
    _write_truth(op, truth_root, truth_rows)
    bad_counts = dict.fromkeys(BAD_KINDS, 0)
    for row in truth_rows:
        if row["kind"] != "valid":
            bad_counts[str(row["kind"])] += 1
    say("truth", 1, 1)
    return Summary(
        len(op.persons),
        len(op.accounts),
        len(op.lines),
        len(truth_rows),
        bad_counts,
        files,
        landing_root,
        truth_root,
    )


def _simulate(
    cfg: GeneratorCfg, country: CountryCfg, say: Callable[[str, int, int], None]
) -> Operator:
    """The population, its plans and life-cycle, and every event with its arrival time."""
    op = Operator(cfg, country)
    op.build_population()
    op.plan_contacts()
    op.plan_lifecycle()
    say("population", 1, 1)
    op.lifecycle_events()
    total_lines = len(op.lines)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if done % 500 == 0 or done == total_lines:
            say("events", done, total_lines)

    op.usage_events(tick)
    op.assign_ids_and_arrival()
    return op


def _lines_by_source(op: Operator, shares: dict[str, float]) -> dict[str, list[Line_]]:
    """Every landing line per source: the valid events (some with a drifted field), then the
    bad variants, each arriving up to ten hours after its event."""
    out: dict[str, list[Line_]] = {s: [] for s in SOURCES}
    drift_ids: set[str] = set()
    bad_lines: list[Line_] = []
    for kind, e, text in _bad_variants(op, shares):
        if kind == "schema_drift":
            drift_ids.add(e.event_id)
            continue
        arrival = (e.arrival or e.ts) + timedelta(minutes=op.rng.randint(0, 600))
        bad_lines.append(Line_(text, e.event_id, kind, arrival, e))
    for e in op.events:
        rec = event_record(e)
        if e.event_id in drift_ids:
            rec["loyalty_tier"] = "gold"
        kind = "schema_drift" if e.event_id in drift_ids else "valid"
        out[e.source].append(Line_(_dumps(rec), e.event_id, kind, e.arrival or e.ts, e))
    for bl in bad_lines:
        out[bl.event.source].append(bl)
    return out


def _write_landing(
    source: str,
    lines: list[Line_],
    n_files: int,
    landing_root: Path,
    truth_rows: list[dict[str, object]],
) -> int:
    """A source's lines in arrival order, split over `n_files` files written atomically; each
    line's truth row goes to `truth_rows`. Returns the number of files written."""
    lines.sort(key=lambda ln: ln.arrival)
    folder = landing_root / source
    folder.mkdir(parents=True, exist_ok=True)
    per_file = max(1, -(-len(lines) // n_files))
    for i in range(n_files):
        chunk = lines[i * per_file : (i + 1) * per_file]
        if not chunk:
            continue
        name = f"{source}-{i + 1:05d}.jsonl"
        tmp = folder / f".{name}.tmp"
        tmp.write_text("".join(ln.text + "\n" for ln in chunk))
        tmp.rename(folder / name)  # a reader never sees a half-written file
        truth_rows.extend(
            {
                "source": source,
                "file": name,
                "line_no": pos + 1,
                "event_id": ln.event_id
                if ln.kind in ("valid", "schema_drift", "duplicate")
                else f"bad-{ln.kind}-{ln.event_id}",
                "original_event_id": ln.event_id,
                "kind": ln.kind,
                "event_type": ln.event.event_type,
                "event_ts": ln.event.ts,
                "person_key": ln.event.person,
            }
            for pos, ln in enumerate(chunk)
        )
    return min(n_files, len(lines))


def write_reference(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tariffs = ["tariff_id,name,monthly_fee,data_gb,kind,term_months"]
    tariffs += [",".join(map(str, row)) for row in TARIFFS]
    (folder / "tariffs.csv").write_text("\n".join(tariffs) + "\n")
    products = [
        "product_id,name,category,price",
        "BND-1GB,1 GB bundle,data,9000.00",
        "BND-5GB,5 GB bundle,data,29000.00",
        "BND-ROAM,Roaming day pass,roaming,45000.00",
        "VAS-TUNE,Caller tune,vas,5000.00",
        "DEV-PHONE,Smartphone instalment,device,250000.00",
    ]
    (folder / "products.csv").write_text("\n".join(products) + "\n")
    segments = [
        "segment_id,name,min_monthly_spend,max_monthly_spend",
        "SEG-LOW,Low value,0.00,40000.00",
        "SEG-MID,Mid value,40000.00,100000.00",
        "SEG-HIGH,High value,100000.00,250000.00",
        "SEG-VIP,VIP,250000.00,",
    ]
    (folder / "segments.csv").write_text("\n".join(segments) + "\n")


def _write_truth(op: Operator, folder: Path, events: list[dict[str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    persons = [
        {
            "person_key": p.key,
            "passport": p.passport,
            "email": p.email,
            "shared_email": p.shared_email,
            "contact_email": p.contact_email,
            "login_email": p.login_email,
            "situations": sorted(p.situations),
            "app_user_id": p.app_user_id,
            "first_name": p.first_name,
            "last_name": p.last_name,
        }
        for p in op.persons.values()
    ]
    accounts = [
        {
            "account_id": a.account_id,
            "account_type": a.type,
            "holder_person_key": a.holder if a.type != "corporate" else None,
        }
        for a in op.accounts.values()
    ]
    tenures = []
    iccids = []
    for ln in op.lines:
        tenures.append(
            {
                "msisdn": ln.msisdn,
                "person_key": ln.person,
                "account_id": ln.account_id,
                "role": ln.role,
                "tariff_id": ln.tariff_id,
                "valid_from": ln.start,
                "valid_to": ln.end,
                "end_reason": ln.end_reason,
                "opened_by": ln.opened_by,
                "end_reported": ln.end_reported,
            }
        )
        start, iccid = ln.start, ln.iccid
        for at, new in ln.swaps:
            iccids.append(
                {
                    "iccid": iccid,
                    "msisdn": ln.msisdn,
                    "person_key": ln.person,
                    "valid_from": start,
                    "valid_to": at,
                }
            )
            start, iccid = at, new
        iccids.append(
            {
                "iccid": iccid,
                "msisdn": ln.msisdn,
                "person_key": ln.person,
                "valid_from": start,
                "valid_to": ln.end,
            }
        )
    for name, rows in (
        ("persons", persons),
        ("accounts", accounts),
        ("tenures", tenures),
        ("iccids", iccids),
        ("events", events),
    ):
        table = pa.Table.from_pylist(rows)
        if "situations" in table.column_names:  # list<null> when no one has a situation
            i = table.schema.get_field_index("situations")
            table = table.set_column(i, "situations", table.column(i).cast(pa.list_(pa.string())))
        pq.write_table(table, folder / f"{name}.parquet")
