"""The consent audit: who saw what about a customer, under which purposes and legal basis."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api.deps import ConsentStewardDep
from api.errors import KEYED, StrictRoute, error
from api.models import IsoTime
from api.routes.profiles import IdType, valid
from pipelines.activation.report import campaign_report, report_csv, report_html
from pipelines.identity.resolve import PERSON_ID_PATTERN
from pipelines.profile.state import Holding, holders

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=KEYED, route_class=StrictRoute)


Person = Annotated[
    str, Query(description="person_id: P and 20 hex digits", pattern=PERSON_ID_PATTERN)
]
SINCE = Query(alias="from", description="Only records at or after this time")
UNTIL = Query(alias="to", description="Only records at or before this time")
SEGMENT = Query(description="Only this segment (campaign)")


def _holders(request: Request, id_type: str, id_value: str) -> list[Holding]:
    """Every holder of an identifier over their tenure (and the ids merged into them), from
    the identity map; a person id is its own holder."""
    value = valid(request.app.state.settings, id_type, id_value)
    if id_type == "person_id":
        return [Holding(value, None, None)]
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
    summary="Every lookup of a person's profile in a time range (consent steward or admin keys)",
    responses={403: error("The key is not the consent steward's or an admin's")},
)
def audit(
    request: Request,
    _who: ConsentStewardDep,
    person: Person,
    since: Annotated[IsoTime | None, SINCE] = None,
    until: Annotated[IsoTime | None, UNTIL] = None,
) -> list[dict[str, Any]]:
    return _lookups(request, [Holding(person, None, None)], since, until)


@router.get(
    "/by/{id_type}/{id_value}",
    summary="Every lookup of whoever held an identifier while they held it (consent steward)",
    responses={403: error("The key is not the consent steward's or an admin's")},
)
def audit_by_identifier(
    request: Request,
    _who: ConsentStewardDep,
    id_type: IdType,
    id_value: str,
    since: Annotated[IsoTime | None, SINCE] = None,
    until: Annotated[IsoTime | None, UNTIL] = None,
) -> list[dict[str, Any]]:
    """Each person who held the identifier (identity map), over the tenure they held it: a
    recycled number's other owners are left out; records under an id merged into a holder
    are included."""
    return _lookups(request, _holders(request, id_type, id_value), since, until)


def _lookups(
    request: Request, who: list[Holding], since: datetime | None, until: datetime | None
) -> list[dict[str, Any]]:
    log = request.app.state.audit
    log.flush()  # lookups answered a moment ago are part of the answer
    records: list[dict[str, Any]] = []
    for h in who:
        records += log.query(h.person_id, *_within(since, until, h))
    return sorted(records, key=lambda r: (r["at"], r["id"]))


@router.get(
    "/pushes",
    summary="Every segment push that told a channel about a person, with the basis used",
    responses={403: error("The key is not the consent steward's or an admin's")},
)
def pushes(
    request: Request,
    _who: ConsentStewardDep,
    person: Person,
    segment: Annotated[str | None, SEGMENT] = None,
) -> list[dict[str, Any]]:
    """Answers "on what basis did this customer receive campaign X": per push, the segment
    version and its rule, the channel, the purpose and its legal basis, whether the person
    entered or exited, the consent state used (granted, since, basis, source) and whether the
    channel acknowledged the delivery."""
    return _pushes(request, [Holding(person, None, None)], segment)


@router.get(
    "/pushes/by/{id_type}/{id_value}",
    summary="Every segment push about whoever held an identifier, while they held it",
    responses={403: error("The key is not the consent steward's or an admin's")},
)
def pushes_by_identifier(
    request: Request,
    _who: ConsentStewardDep,
    id_type: IdType,
    id_value: str,
    segment: Annotated[str | None, SEGMENT] = None,
) -> list[dict[str, Any]]:
    """As by person, for each holder of the identifier over their tenure."""
    return _pushes(request, _holders(request, id_type, id_value), segment)


def _pushes(request: Request, who: list[Holding], segment: str | None) -> list[dict[str, Any]]:
    store = request.app.state.pushes
    segments = request.app.state.segments
    rows: list[dict[str, Any]] = []
    for h in who:
        rows += [r for r in store.audit(h.person_id, segment) if _held_then(r, h)]
    for row in rows:
        version = segments.get(row["segment_id"], row["segment_version"])
        row["rule"] = version.rule if version else None
        row["delivery"] = store.delivery_of(row["channel"], row["push_id"])
    return rows


def _held_then(row: dict[str, Any], h: Holding) -> bool:
    """A push made while the person held the identifier asked about (`at`: ISO with offset)."""
    at = datetime.fromisoformat(row["at"])
    return (h.since is None or at >= h.since) and (h.until is None or at < h.until)


@router.get(
    "/campaigns/{push_id}",
    summary="The regulator's report of one push: rule, purpose, legal basis, and per recipient "
    "the consent state used and the attributes sent (consent steward or admin)",
    responses={
        200: {
            "description": "The report: JSON (default), CSV (a row per recipient) or a page",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/csv": {},
                "text/html": {},
            },
        },
        403: error("The key is not the consent steward's or an admin's"),
        404: error("No such push"),
    },
    response_model=None,
)
def campaign(
    request: Request,
    _who: ConsentStewardDep,
    push_id: str,
    format: Annotated[
        Literal["json", "csv", "html"], Query(description="json, csv (a row per recipient) or html")
    ] = "json",
) -> Response:
    """The consent state is the one the push recorded when it was sent: a recipient who
    withdrew consent later still shows what the push relied on, as the law asks."""
    state = request.app.state
    state.audit.flush()  # the push's own records
    report = campaign_report(state.pushes, state.segments, push_id)
    if report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no push {push_id!r}")
    if format == "csv":
        return Response(
            report_csv(report),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{push_id}.csv"'},
        )
    if format == "html":
        return HTMLResponse(report_html(report))
    return JSONResponse(report)
