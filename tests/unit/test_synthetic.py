"""The synthetic operator is deterministic and carries the hard cases the pipeline must handle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.config import PROJECT_ROOT, load_settings
from pipelines.synthetic.operator import BAD_KINDS, generate

pytestmark = pytest.mark.unit


def _generate(root: Path, **overrides: object):
    settings = load_settings(PROJECT_ROOT / "conf", env={})
    cfg = settings.generator.model_copy(
        update={
            "subscribers": 600,
            "days": 10,
            "files_per_source": 2,
            "recycle_share": 0.03,  # enough recycled numbers for each way a tenure ends
            "port_out_share": 0.02,
            # a shop's group of eight customers needs more holders than 1% of this operator
            "situations": settings.generator.situations.model_copy(update={"shop_email": 0.05}),
            **overrides,
        }
    )
    return generate(cfg, settings.identity.country, root / "landing", root / "truth")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.jsonl")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("operator")
    _generate(root)
    return root


def test_same_seed_same_files_other_seed_differs(operator: Path, tmp_path: Path) -> None:
    _generate(tmp_path / "again")
    _generate(tmp_path / "other", seed=7)
    assert _digest(tmp_path / "again" / "landing") == _digest(operator / "landing")
    assert _digest(tmp_path / "other" / "landing") != _digest(operator / "landing")


def test_accounts_lines_and_people(operator: Path) -> None:
    tenures = pq.read_table(operator / "truth" / "tenures.parquet").to_pylist()
    accounts = {
        a["account_id"]: a
        for a in pq.read_table(operator / "truth" / "accounts.parquet").to_pylist()
    }
    persons = pq.read_table(operator / "truth" / "persons.parquet").to_pylist()
    lines_per_account: dict[str, set[str]] = {}
    for t in tenures:
        lines_per_account.setdefault(t["account_id"], set()).add(t["msisdn"])
    families = [a for a in accounts.values() if a["account_type"] == "family"]
    corporates = [a for a in accounts.values() if a["account_type"] == "corporate"]
    assert families and all(2 <= len(lines_per_account[a["account_id"]]) <= 6 for a in families)
    assert corporates and all(len(lines_per_account[a["account_id"]]) >= 10 for a in corporates)
    lines_per_person: dict[str, int] = {}
    for t in tenures:
        lines_per_person[t["person_key"]] = lines_per_person.get(t["person_key"], 0) + 1
    assert any(n >= 2 for n in lines_per_person.values()), "some people hold several lines"
    assert any(p["shared_email"] for p in persons), "some household emails are shared"
    assert all(t["msisdn"].startswith("998") and len(t["msisdn"]) == 12 for t in tenures)


def test_recycled_numbers_change_owner_after_quarantine(operator: Path) -> None:
    tenures = pq.read_table(operator / "truth" / "tenures.parquet").to_pylist()
    by_number: dict[str, list[dict]] = {}
    for t in tenures:
        by_number.setdefault(t["msisdn"], []).append(t)
    recycled = [
        sorted(ts, key=lambda t: t["valid_from"]) for ts in by_number.values() if len(ts) > 1
    ]
    assert recycled
    for first, second in (r[:2] for r in recycled):
        assert first["person_key"] != second["person_key"]
        assert first["valid_to"] is not None
        if second["opened_by"] == "ownership_change":  # handed over: no gap, no deactivation
            assert second["valid_from"] == first["valid_to"] and not first["end_reported"]
        else:
            assert second["valid_from"] > first["valid_to"]
    reasons = {t["end_reason"] for t in tenures}
    assert {"port_out", "ownership_change"} <= reasons
    assert any(not t["end_reported"] and t["end_reason"] != "ownership_change" for t in tenures)


def test_every_identity_situation_is_made_and_tagged(operator: Path) -> None:
    """Each situation the identity quality report scores has persons tagged in the truth."""
    from pipelines.config import SituationShares

    persons = pq.read_table(operator / "truth" / "persons.parquet").to_pylist()
    tagged = {s for p in persons for s in p["situations"]}
    wanted = set(SituationShares.model_fields) | {"recycled", "sim_swap"}
    assert wanted - tagged == set(), "situations the generator did not make"
    household = [p for p in persons if "household_email" in p["situations"]]
    assert all(p["contact_email"] and p["email"] is None for p in household)


def test_every_bad_kind_is_present_and_marked(operator: Path) -> None:
    events = pq.read_table(operator / "truth" / "events.parquet").to_pylist()
    kinds = {e["kind"] for e in events}
    assert set(BAD_KINDS) <= kinds
    # Landing files hold exactly the lines the truth lists.
    lines = sum(len(p.read_text().splitlines()) for p in (operator / "landing").rglob("*.jsonl"))
    assert lines == len(events)
    bad_json = [e for e in events if e["kind"] == "bad_json"]
    text = (operator / "landing" / bad_json[0]["source"] / bad_json[0]["file"]).read_text()
    line = text.splitlines()[bad_json[0]["line_no"] - 1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_timestamps_carry_offsets_and_reference_files_exist(operator: Path) -> None:
    first = (
        (operator / "landing" / "billing").glob("*.jsonl").__next__().read_text().splitlines()[0]
    )
    assert json.loads(first)["event_ts"].endswith("+05:00")
    net = next((operator / "landing" / "network").glob("*.jsonl")).read_text().splitlines()[0]
    assert json.loads(net)["event_ts"].endswith("Z")
    for name in ("tariffs.csv", "products.csv", "segments.csv"):
        assert (operator / "landing" / "reference" / name).stat().st_size > 0
