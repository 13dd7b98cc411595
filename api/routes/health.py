"""Liveness and readiness (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="A gold snapshot is loaded",
    responses={503: {"description": "No snapshot loaded yet"}},
)
async def readyz(request: Request, response: Response) -> dict[str, object]:
    current = request.app.state.snapshots.current
    if current is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return {"ready": False}
    return {"ready": True, "snapshot_version": current.version}
