"""The consent audit: who saw what about a customer, under which purposes and legal basis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from api.deps import StewardDep
from api.errors import KEYED, StrictRoute, error
from api.fastpath import ID_TYPES
from api.models import IsoTime
from api.routes.profiles import valid
from pipelines.identity.resolve import PERSON_ID_PATTERN
from pipelines.profile.state import Holding, holders

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=KEYED, route_class=StrictRoute)


Person = Annotated[
    str | None,
    Query(description="person_id: P and 20 hex digits", pattern=PERSON_ID_PATTERN),
]
IdTypeQuery = Annotated[
    str | None,
    Query(description="Instead of `person`: an identifier's type (msisdn, email, iccid, ...)"),
]
IdValueQuery = Annotated[str | None, Query(description="The identifier's value, with `id_type`")]


def _whose(
    request: Request, person: str | None, id_type: str | None, id_value: str | None
) -> list[Holding]:
    """The persons asked about: `person`, or every holder of an identifier over their tenure
    (and the ids merged into them), resolved through the identity map."""
    if (person is None) == (id_type is None or id_value is None):
        raise HTTPException(
            422, "give either person, or id_type and id_value (e.g. id_type=msisdn&id_value=...)"
        )
    if person is not None:
        return [Holding(person, None, None)]
    assert id_type is not None and id_value is not None
    if id_type == "person_id":
        return [Holding(valid(request.app.state.settings, id_type, id_value), None, None)]
    if id_type not in ID_TYPES:
        raise HTTPException(422, f"id_type: expected one of {', '.join(ID_TYPES)}")
    value = valid(request.app.state.settings, id_type, id_value)
    return holders(request.app.state.snapshots.lake, id_type, value)


def _within(
    since: datetime | None, until: datetime | None, h: Holding
) -> tuple[datetime | None, datetime | None]:
    """The asked range cut to a holding's tenure."""
    lo = max((t for t in (since, h.since) if t is not None), default=None)
    hi = min((t for t in (until, h.until) if t is not None), default=None)
    return lo, hi


@router.get(
    "",
    summary="Every lookup of a person's profile in a time range (steward or admin keys)",
    responses={403: error("The key is not a steward or admin key")},
)
def audit(
    request: Request,
    _who: StewardDep,
    person: Person = None,
    id_type: IdTypeQuery = None,
    id_value: IdValueQuery = None,
    since: Annotated[IsoTime | None, Query(alias="from")] = None,
    until: Annotated[IsoTime | None, Query(alias="to")] = None,
) -> list[dict[str, Any]]:
    """By person, or by identifier: every lookup of each person who held it, while they held
    it (a recycled number's other owners are not included), under their id or one merged into
    them."""
    log = request.app.state.audit
    log.flush()  # lookups answered a moment ago are part of the answer
    records: list[dict[str, Any]] = []
    for h in _whose(request, person, id_type, id_value):
        records += log.query(h.person_id, *_within(since, until, h))
    return sorted(records, key=lambda r: (r["at"], r["id"]))


@router.get(
    "/pushes",
    summary="Every segment push that told a channel about a person, with the basis used",
    responses={403: error("The key is not a steward or admin key")},
)
def pushes(
    request: Request,
    _who: StewardDep,
    person: Person = None,
    id_type: IdTypeQuery = None,
    id_value: IdValueQuery = None,
    segment: Annotated[str | None, Query(description="Only this segment (campaign)")] = None,
) -> list[dict[str, Any]]:
    """Answers "on what basis did this customer receive campaign X": per push, the segment
    version and its rule, the channel, the purpose and its legal basis, whether the person
    entered or exited, the consent state used (granted, since, basis, source) and whether the
    channel acknowledged the delivery."""
    store = request.app.state.pushes
    segments = request.app.state.segments
    rows: list[dict[str, Any]] = []
    for h in _whose(request, person, id_type, id_value):
        rows += [r for r in store.audit(h.person_id, segment) if _held_then(r, h)]
    for row in rows:
        version = segments.get(row["segment_id"], row["segment_version"])
        row["rule"] = version.rule if version else None
        row["delivery"] = store.delivery_of(row["channel"], row["push_id"])
    return rows


def _held_then(row: dict[str, Any], h: Holding) -> bool:
    """A push made while the person held the identifier asked about."""
    at = row["at"] if isinstance(row["at"], datetime) else datetime.fromisoformat(str(row["at"]))
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return (h.since is None or at >= h.since) and (h.until is None or at < h.until)
