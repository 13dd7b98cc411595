"""Status for stewards (steward or admin keys): each source's contract, health and drift, the
SLAs measured now, and the alerts raised for them."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from api.deps import StewardDep
from api.errors import KEYED, StrictRoute, error
from pipelines.lakehouse.reader import LakeReader
from pipelines.ops.status import Alerts, contract_status, sla_status

router = APIRouter(prefix="/v1/status", tags=["status"], responses=KEYED, route_class=StrictRoute)
FORBIDDEN: dict[int | str, dict[str, Any]] = {403: error("The key is not a steward or admin key")}


def _lake(request: Request) -> LakeReader:
    return LakeReader(request.app.state.settings.paths.lake_root)


@router.get(
    "/contracts", summary="Per source: contract, rows in, quarantine, drift", responses=FORBIDDEN
)
async def contracts(request: Request, _who: StewardDep) -> list[dict[str, Any]]:
    settings = request.app.state.settings
    found = await run_in_threadpool(contract_status, _lake(request), settings)
    return [c.as_json() for c in found]


@router.get("/sla", summary="Every SLA in conf/sla.yaml, measured now", responses=FORBIDDEN)
async def sla(request: Request, _who: StewardDep) -> list[dict[str, Any]]:
    settings = request.app.state.settings
    p99 = request.app.state.lookup_p99_ms()
    found = await run_in_threadpool(sla_status, _lake(request), settings, p99)
    request.app.state.sla_gauges(found)
    return [asdict(r) for r in found]


@router.get("/alerts", summary="Alerts raised for stewards, newest first", responses=FORBIDDEN)
async def alerts(
    request: Request,
    _who: StewardDep,
    source: Annotated[str | None, Query(description="only this source")] = None,
) -> list[dict[str, Any]]:
    store = Alerts(request.app.state.settings.database_url)
    return await run_in_threadpool(store.list, source)
