"""Profile lookups by any identifier, projected through the consent policy for the caller's
channel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import polars as pl
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.datastructures import State

from api.deps import LookupDep, SnapshotDep
from api.errors import KEYED, StrictRoute, error
from api.models import IsoTime, MergedPublic, ProfilePublic
from api.render import RenderedProfiles, Served
from api.snapshot import Snapshot
from pipelines.config import PolicyCfg, Settings
from pipelines.identity.explain import normalise_value
from pipelines.identity.resolve import is_person_id
from pipelines.lakehouse.catalog import PROFILES
from pipelines.ops.audit import AuditRecord
from pipelines.ops.keys import Caller
from pipelines.profile.state import AsOf, person_at, profiles_version_at

PREFIX = "/v1/profiles"
router = APIRouter(prefix=PREFIX, tags=["profiles"], responses=KEYED, route_class=StrictRoute)

IdType = Literal["msisdn", "iccid", "account_id", "app_user_id", "email", "passport", "person_id"]
ERRORS: dict[int | str, dict[str, object]] = {
    403: error("The key is not a channel key"),
    404: error("No person holds this identifier now"),
    429: error("Over the key's lookup rate (api.rate_limits); see Retry-After"),
    503: error("No gold snapshot loaded yet"),
    308: {"model": MergedPublic, "description": "The person was merged into another"},
}


def valid(settings: Settings, id_type: str, value: str) -> str:
    """The identifier as identity stores it, or 422 naming the field and the fix."""
    if id_type == "person_id":
        if not is_person_id(value):
            raise HTTPException(422, "id_value: a person_id is P followed by 20 hex digits")
        return value
    normal = normalise_value(id_type, value, settings.identity)
    if id_type == "msisdn":
        country = settings.identity.country
        if not (
            normal.isdigit()
            and normal.startswith(country.calling_code)
            and len(normal) == len(country.calling_code) + country.national_number_length
        ):
            raise HTTPException(
                422,
                f"id_value: {value!r} is not an msisdn of the numbering plan "
                f"(+{country.calling_code} and {country.national_number_length} digits)",
            )
    elif id_type == "email" and ("@" not in normal or normal.startswith("@")):
        raise HTTPException(422, f"id_value: {value!r} is not an email address")
    elif not normal:
        raise HTTPException(422, "id_value: empty identifier")
    return normal


@router.get(
    "/{id_type}/{id_value}",
    summary="The profile of the person holding an identifier, as this channel may see it",
    response_model=ProfilePublic,
    responses=ERRORS,
)
async def lookup(
    id_type: IdType, id_value: str, request: Request, who: LookupDep, snap: SnapshotDep
) -> Response:
    """In memory end to end (dictionaries of the snapshot, the compiled policy, a queued audit
    record), so it runs on the event loop without a thread hop."""
    value = valid(request.app.state.settings, id_type, id_value)
    row = current_row(snap, id_type, value)
    if row is None and id_type == "person_id":
        survivor = snap.surviving(value)
        if survivor:
            location = f"/v1/profiles/person_id/{survivor}"
            return JSONResponse(
                MergedPublic(person_id=value, merged_into=survivor, location=location).model_dump(),
                status_code=status.HTTP_308_PERMANENT_REDIRECT,
                headers={"Location": location},
            )
    if row is None:
        raise HTTPException(404, f"no person holds {id_type} {id_value} now")
    body = projected(request.app.state, who, snap, row, "lookup")
    return Response(body, media_type="application/json")


@router.get(
    "/{id_type}/{id_value}/as-of",
    summary="The profile as it was at a time (audits, disputes), as this channel may see it",
    response_model=ProfilePublic,
    responses=ERRORS,
)
def lookup_as_of(
    id_type: IdType,
    id_value: str,
    ts: Annotated[IsoTime, Query(description="ISO-8601 time with an offset")],
    request: Request,
    who: LookupDep,
    snap: SnapshotDep,
    by: Annotated[
        AsOf,
        Query(
            description="event_time: the profile as it stood at `ts`, from the newest version "
            "reflecting no event after it (right after a backfill too); commit_time: the "
            "version the CDP held at `ts`, what it knew and served then"
        ),
    ] = "event_time",
) -> Response:
    """The values as they were at `ts`, served only where consent for their purpose was in
    force then *and* is now: a withdrawal also ends the use of what was held before it."""
    if ts.tzinfo is None:
        raise HTTPException(422, "ts: give a time zone, e.g. 2026-10-05T12:00:00Z")
    value = valid(request.app.state.settings, id_type, id_value)
    lake = request.app.state.snapshots.lake
    person = value if id_type == "person_id" else person_at(lake, id_type, value, ts)
    version = profiles_version_at(lake, ts, by)
    if person is None or version is None:
        raise HTTPException(404, f"no profile held {id_type} {id_value} at {ts.isoformat()}")
    frame = lake.read_polars(PROFILES, where=pl.col("person_id") == person, version=version)
    if not frame.height:
        raise HTTPException(404, f"no profile held {id_type} {id_value} at {ts.isoformat()}")
    policy = request.app.state.settings.policy
    frame = frame.with_columns(in_force_now(snap, person, policy, frame))
    rendered = RenderedProfiles(frame, policy, version)
    body = projected(request.app.state, who, rendered, 0, "lookup_as_of")
    return Response(body, media_type="application/json")


def in_force_now(
    snap: Snapshot, person: str, policy: PolicyCfg, frame: pl.DataFrame
) -> list[pl.Expr]:
    """Each purpose's `consent_<p>_granted` of an old profile row, kept only where the person
    (or the person they were merged into) has it in force in the current snapshot too."""
    current = person if snap.row_of(person) is not None else snap.surviving(person)
    row = snap.row_of(current) if current is not None else None
    now = snap.consent(row) if row is not None else {}
    columns = [f"consent_{p}_granted" for p in policy.purposes]
    return [
        (pl.col(c).fill_null(False) & pl.lit(now.get(c) is True)).alias(c)
        for c in columns
        if c in frame.columns
    ]


def current_row(snap: Snapshot, id_type: str, value: str) -> int | None:
    """The snapshot row of the person holding a (valid) identifier now."""
    if id_type == "person_id":
        return snap.row_of(value)
    return snap.row_of_key(id_type, value)


def projected(state: State, who: Caller, served: Served, row: int, kind: str) -> bytes:
    """The row as the caller's channel may see it (a ProfilePublic JSON document, rendered from
    pre-encoded fragments: validating our own output through the response model would cost
    more than the lookup itself); the lookup is audited (names, not values)."""
    body, disclosure = served.body(row, state.rules[who.channel])
    state.audit.record(
        AuditRecord(
            kind=kind,
            key_id=who.key_id,
            channel=who.channel,
            person_id=served.person_id(row),
            disclosure=disclosure,
            profile_version=served.version_of(row),
            snapshot_version=served.version,
            at=datetime.now(UTC),
        )
    )
    return body
