"""The audience builder page (`/ui`): static HTML, CSS and a small script served by the API
itself (nothing fetched from a CDN); every call it makes uses the marketing key typed in."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

UI = Path(__file__).resolve().parent.parent / "ui"
router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """The page's routes and its static files."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=UI), name="ui-static")


@router.get("/ui")
def page() -> FileResponse:
    return FileResponse(UI / "index.html", media_type="text/html")


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse("/ui")
