"""Right of access: everything held about a person, for the consent steward (or an admin) to
hand to the customer who asked, as JSON or as a readable page."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import ConsentStewardDep
from api.errors import KEYED, StrictRoute, error
from api.models import IsoTime
from api.routes.profiles import IdType, valid
from pipelines.ops.subject import holder_at, render_html, subject_export

router = APIRouter(prefix="/v1/persons", tags=["audit"], responses=KEYED, route_class=StrictRoute)
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The export: JSON (default) or, with format=html, a readable page",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/html": {}},
    },
    403: error("The key is not the consent steward's or an admin's"),
    404: error("No person holds (or held at that time) this identifier"),
}
Format = Annotated[Literal["json", "html"], Query(description="json, or a readable html page")]
At = Annotated[
    IsoTime | None,
    Query(description="The holder at this time (default now: a recycled number's holder today)"),
]


@router.get(
    "/{id_type}/{id_value}/export",
    summary="Everything held about a person: identifiers, profile, events, consent, segments, "
    "pushes and lookups (consent steward or admin)",
    responses=RESPONSES,
    response_model=None,
)
async def export(
    request: Request,
    _who: ConsentStewardDep,
    id_type: IdType,
    id_value: str,
    format: Format = "json",
    at: At = None,
) -> JSONResponse | HTMLResponse:
    """The person is the identifier's holder at `at` (for a person_id: that person); a recycled
    number's other owners, and their events on it, are not part of the answer."""
    app = request.app.state
    value = valid(app.settings, id_type, id_value)
    lake = app.snapshots.lake
    person = (
        value
        if id_type == "person_id"
        else await run_in_threadpool(holder_at, lake, id_type, value, at)
    )
    doc = None
    if person is not None:
        doc = await run_in_threadpool(
            subject_export, lake, app.settings, person, app.audit, app.pushes
        )
    if doc is None:
        when = f" at {at.isoformat()}" if isinstance(at, datetime) else ""
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no person holds {id_type} {id_value}{when}"
        )
    if format == "html":
        return HTMLResponse(render_html(doc))
    return JSONResponse(doc)
