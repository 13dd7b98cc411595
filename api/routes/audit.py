"""The consent audit: who saw what about a customer, under which purposes and legal basis."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.deps import StewardDep
from api.errors import KEYED, StrictRoute, error
from api.models import IsoTime
from pipelines.identity.resolve import PERSON_ID_PATTERN

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=KEYED, route_class=StrictRoute)


@router.get(
    "",
    summary="Every lookup of a person's profile in a time range (steward or admin keys)",
    responses={403: error("The key is not a steward or admin key")},
)
def audit(
    request: Request,
    _who: StewardDep,
    person: Annotated[
        str, Query(description="person_id: P and 20 hex digits", pattern=PERSON_ID_PATTERN)
    ],
    since: Annotated[IsoTime | None, Query(alias="from")] = None,
    until: Annotated[IsoTime | None, Query(alias="to")] = None,
) -> list[dict[str, Any]]:
    log = request.app.state.audit
    log.flush()  # lookups answered a moment ago are part of the answer
    records: list[dict[str, Any]] = log.query(person, since, until)
    return records


@router.get(
    "/pushes",
    summary="Every segment push that told a channel about a person, with the basis used",
    responses={403: error("The key is not a steward or admin key")},
)
def pushes(
    request: Request,
    _who: StewardDep,
    person: Annotated[
        str, Query(description="person_id: P and 20 hex digits", pattern=PERSON_ID_PATTERN)
    ],
    segment: Annotated[str | None, Query(description="Only this segment (campaign)")] = None,
) -> list[dict[str, Any]]:
    """Answers "on what basis did this customer receive campaign X": per push, the segment
    version and its rule, the channel, the purpose and its legal basis, whether the person
    entered or exited, the consent state used (granted, since, basis, source) and whether the
    channel acknowledged the delivery."""
    store = request.app.state.pushes
    segments = request.app.state.segments
    rows: list[dict[str, Any]] = store.audit(person, segment)
    for row in rows:
        version = segments.get(row["segment_id"], row["segment_version"])
        row["rule"] = version.rule if version else None
        row["delivery"] = store.delivery_of(row["channel"], row["push_id"])
    return rows
