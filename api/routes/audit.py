"""The consent audit: who saw what about a customer, under which purposes and legal basis."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api.deps import StewardDep

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get(
    "",
    summary="Every lookup of a person's profile in a time range (steward or admin keys)",
    responses={403: {"description": "The key is not a steward or admin key"}},
)
def audit(
    request: Request,
    _who: StewardDep,
    person: Annotated[str, Query(description="person_id")],
    since: Annotated[datetime | None, Query(alias="from")] = None,
    until: Annotated[datetime | None, Query(alias="to")] = None,
) -> list[dict[str, Any]]:
    log = request.app.state.audit
    log.flush()  # lookups answered a moment ago are part of the answer
    records: list[dict[str, Any]] = log.query(person, since, until)
    return records
