"""Profile lookups by any identifier, projected through the consent policy for the caller's
channel."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse

from api.deps import ChannelDep, SnapshotDep
from api.models import ErrorPublic, MergedPublic, ProfilePublic, WithheldPublic
from pipelines.consent import project
from pipelines.identity.explain import normalise_value

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
    rules = request.app.state.rules[who.channel]
    seen = project(row, rules)
    return ProfilePublic(
        person_id=row["person_id"],
        channel=rules.channel,
        attributes=seen.served,
        withheld=[
            WithheldPublic(attribute=w.attribute, reason=w.reason, purposes=list(w.purposes))
            for w in seen.withheld
        ],  # type: ignore[arg-type]
        consent_in_force=seen.consent_used,
        profile_version=row["profile_version"],
        snapshot_version=snap.version,
        last_event_ts=snap.last_event_ts,
    )
