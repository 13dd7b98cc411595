"""Status for stewards (steward or admin keys): each source's contract, health and drift, the
SLAs measured now, the alerts raised for them, and releasing a held source past the gate. A
source steward sees and acts for their own source; admins (and stewards of every domain) for
all."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from starlette.concurrency import run_in_threadpool

from api.deps import StewardDep
from api.errors import KEYED, StrictRoute, error
from pipelines.lakehouse.catalog import silver_table
from pipelines.lakehouse.reader import LakeReader
from pipelines.ops.health import pipeline_health
from pipelines.ops.keys import Caller
from pipelines.ops.releases import release
from pipelines.ops.status import Alerts, contract_status, sla_status

router = APIRouter(prefix="/v1/status", tags=["status"], responses=KEYED, route_class=StrictRoute)
FORBIDDEN: dict[int | str, dict[str, Any]] = {403: error("The key is not a steward or admin key")}


def _lake(request: Request) -> LakeReader:
    return LakeReader(request.app.state.settings.paths.lake_root)


@router.get(
    "/contracts", summary="Per source: contract, rows in, quarantine, drift", responses=FORBIDDEN
)
async def contracts(request: Request, who: StewardDep) -> list[dict[str, Any]]:
    settings = request.app.state.settings
    found = await run_in_threadpool(contract_status, _lake(request), settings)
    return [c.as_json() for c in found if who.stewards(c.source)]


@router.get("/sla", summary="Every SLA in conf/sla.yaml, measured now", responses=FORBIDDEN)
async def sla(request: Request, _who: StewardDep) -> list[dict[str, Any]]:
    settings = request.app.state.settings
    p99 = request.app.state.lookup_p99_ms()
    found = await run_in_threadpool(sla_status, _lake(request), settings, p99)
    request.app.state.sla_gauges(found)
    return [asdict(r) for r in found]


@router.get(
    "/pipeline",
    summary="Which stage is behind: what waits at each hop, and for how long",
    responses=FORBIDDEN,
)
async def pipeline(request: Request, _who: StewardDep) -> dict[str, Any]:
    """Per source: landing files (or topic messages) not yet in bronze, bronze rows not yet in
    silver, silver rows not yet in gold; and the gold versions this API process has not applied.
    `behind` names the hop whose oldest waiting item has waited longest: every later stage can
    only be as fresh as it. Counts and ages only, so every steward sees every source."""
    settings = request.app.state.settings
    current = request.app.state.snapshots.current
    serving = None if current is None else current.version
    return await run_in_threadpool(
        pipeline_health, _lake(request), settings, serving_version=serving
    )


@router.get("/alerts", summary="Alerts raised for stewards, newest first", responses=FORBIDDEN)
async def alerts(
    request: Request,
    who: StewardDep,
    source: Annotated[str | None, Query(description="only this source")] = None,
) -> list[dict[str, Any]]:
    if source is not None:
        _steward_of(who, source)
    store = Alerts(request.app.state.settings.database_url)
    found = await run_in_threadpool(store.list, source)
    return [a for a in found if who.stewards(a["source"])]


def _steward_of(who: Caller, source: str) -> None:
    if not who.stewards(source):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this key stewards {who.channel!r}, not {source!r}: ask {source}'s steward "
            "(`cdp keys create --role steward --domain <source>`) or an admin",
        )


@router.post(
    "/sources/{source}/release",
    summary="Let a held source's waiting rows pass the quality gate (its steward, after review)",
    responses={
        **FORBIDDEN,
        403: error("The key does not steward this source"),
        404: error("No such source, or nothing of it landed yet"),
    },
)
async def release_source(request: Request, source: str, who: StewardDep) -> dict[str, Any]:
    """Releases the source's silver rows as they stand now (the same as `cdp quality release
    silver.<source>`); the running stream promotes them within a second."""
    settings = request.app.state.settings
    if source not in settings.contracts:
        known = ", ".join(settings.sources)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no source {source!r}; sources: {known}")
    _steward_of(who, source)
    table = silver_table(settings.contract(source))
    try:
        version = await run_in_threadpool(release, _lake(request), settings, table)
    except FileNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    return {"source": source, "table": table, "released_version": version, "by": who.name}
