"""Profile lookups by any identifier, projected through the consent policy for the caller's
channel."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse

from api.deps import ChannelDep, SnapshotDep
from api.models import ErrorPublic, MergedPublic, ProfilePublic, WithheldPublic
from pipelines.audit import AuditRecord
from pipelines.consent import project
from pipelines.gold.stage import person_at, profile_as_of, profiles_version_at
from pipelines.identity.explain import normalise_value
from pipelines.keys import Caller

router = APIRouter(prefix="/v1/profiles", tags=["profiles"])

IdType = Literal["msisdn", "iccid", "account_id", "app_user_id", "email", "passport", "person_id"]
ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorPublic, "description": "Missing, unknown or revoked key"},
    403: {"model": ErrorPublic, "description": "The key is not a channel key"},
    404: {"model": ErrorPublic, "description": "No person holds this identifier now"},
    308: {"model": MergedPublic, "description": "The person was merged into another"},
}


def _valid(request: Request, id_type: str, value: str) -> str:
    """The identifier as identity stores it, or 422 naming the field and the fix."""
    if id_type == "person_id":
        if not (value.startswith("P") and len(value) == 21):
            raise HTTPException(422, "id_value: a person_id is P followed by 20 hex digits")
        return value
    settings = request.app.state.settings
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
def lookup(
    id_type: IdType, id_value: str, request: Request, who: ChannelDep, snap: SnapshotDep
) -> ProfilePublic | JSONResponse:
    value = _valid(request, id_type, id_value)
    person = value if id_type == "person_id" else snap.person_of.get((id_type, value))
    row = snap.profile(person) if person else None
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
    return _projected(request, who, row, snap.version, snap.last_event_ts, "lookup")


@router.get(
    "/{id_type}/{id_value}/as-of",
    summary="The profile as it was at a time (audits, disputes), as this channel may see it",
    response_model=ProfilePublic,
    responses=ERRORS,
)
def lookup_as_of(
    id_type: IdType,
    id_value: str,
    ts: Annotated[datetime, Query(description="ISO-8601 time with an offset")],
    request: Request,
    who: ChannelDep,
) -> ProfilePublic:
    if ts.tzinfo is None:
        raise HTTPException(422, "ts: give a time zone, e.g. 2026-10-05T12:00:00Z")
    value = _valid(request, id_type, id_value)
    lake = request.app.state.snapshots.lake
    person = value if id_type == "person_id" else person_at(lake, id_type, value, ts)
    version = profiles_version_at(lake, ts)
    row = profile_as_of(lake, person, ts) if person and version is not None else None
    if row is None or version is None:
        raise HTTPException(404, f"no profile held {id_type} {id_value} at {ts.isoformat()}")
    return _projected(request, who, row, version, None, "lookup_as_of")


def _projected(
    request: Request,
    who: Caller,
    row: dict[str, Any],
    version: int,
    last_event_ts: datetime | None,
    kind: str,
) -> ProfilePublic:
    """The row as the caller's channel may see it; the lookup is audited (names, not values)."""
    rules = request.app.state.rules[who.channel]
    seen = project(row, rules)
    request.app.state.audit.record(
        AuditRecord(
            kind=kind,
            key_id=who.key_id,
            channel=who.channel,
            person_id=row["person_id"],
            purposes=seen.consent_used,
            legal_basis=seen.legal_basis,
            served=sorted(seen.served),
            withheld=[{"attribute": w.attribute, "reason": w.reason} for w in seen.withheld],
            profile_version=row["profile_version"],
            snapshot_version=version,
            at=datetime.now(UTC),
        )
    )
    return ProfilePublic(
        person_id=row["person_id"],
        channel=rules.channel,
        attributes=seen.served,
        withheld=[
            WithheldPublic(attribute=w.attribute, reason=w.reason, purposes=list(w.purposes))  # type: ignore[arg-type]
            for w in seen.withheld
        ],
        consent_in_force=seen.consent_used,
        profile_version=row["profile_version"],
        snapshot_version=version,
        last_event_ts=last_event_ts if last_event_ts is not None else row["last_event_ts"],
    )
