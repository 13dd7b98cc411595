"""Request dependencies: the caller behind an API key, and the snapshot a request runs on."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from api.snapshot import Snapshot
from pipelines.ops.keys import CONSENT, STALE, Caller

key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key: cdp_...")


async def caller(request: Request, key: Annotated[str | None, Depends(key_header)]) -> Caller:
    """The verified caller; 401 without a valid key. Answered from the key cache on the event
    loop; only a cache miss (once per key every few seconds) goes to the database, in a thread."""
    keys = request.app.state.keys
    found = keys.verify_cached(key)
    if found is STALE:
        found = await run_in_threadpool(keys.verify, key)
    if found is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing, unknown or revoked API key: send it in the X-API-Key header "
            "(create one with `cdp keys create`)",
        )
    return found


async def channel_caller(who: Annotated[Caller, Depends(caller)]) -> Caller:
    """A caller whose key is bound to a channel (profiles are projected for a channel)."""
    if who.role != "channel" or who.channel is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this key has role {who.role!r}; profile lookups need a channel key "
            "(`cdp keys create --channel <name>`)",
        )
    return who


async def lookup_caller(
    request: Request, who: Annotated[Caller, Depends(channel_caller)]
) -> Caller:
    """A channel caller within its lookup rate (429 with Retry-After beyond it)."""
    request.app.state.rate_limits.check("lookup", who.key_id)
    return who


def role(*roles: str, what: str) -> Any:
    """A dependency admitting keys of `roles` only: 403 naming them otherwise."""

    async def check(who: Annotated[Caller, Depends(caller)]) -> Caller:
        if who.role not in roles:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{what} {' or '.join(roles)} keys, not {who.role!r}",
            )
        return who

    return Depends(check)


async def snapshot(request: Request) -> Snapshot:
    """The snapshot this request runs on (taken once: a reload mid-request does not affect it)."""
    current = request.app.state.snapshots.current
    if current is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no snapshot loaded yet")
    return current


CallerDep = Annotated[Caller, Depends(caller)]
ChannelDep = Annotated[Caller, Depends(channel_caller)]
LookupDep = Annotated[Caller, Depends(lookup_caller)]
SnapshotDep = Annotated[Snapshot, Depends(snapshot)]
StewardDep = Annotated[Caller, role("steward", "admin", what="this is for")]


async def consent_steward(who: StewardDep) -> Caller:
    """The consent steward (or an admin): who may read whose profile was looked up or pushed."""
    if not who.stewards(CONSENT):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"the audit of lookups and pushes is for the consent steward or an admin; this key "
            f"stewards {who.channel!r} (`cdp keys create --role steward --domain consent`)",
        )
    return who


ConsentStewardDep = Annotated[Caller, Depends(consent_steward)]
MarketerDep = Annotated[Caller, role("marketing", "admin", what="segments are for")]
