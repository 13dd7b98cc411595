"""The API's own documentation pages, /docs (Swagger UI) and /redoc, served with their scripts
from this server: they open without internet and under a CSP that forbids inline script.
The renderers come with the `fastapi-offline` package (installed with the project, never
fetched at run time); the page that starts Swagger UI is a file of ours."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

RENDERERS = Path(fastapi_offline.__file__).resolve().parent / "static"
router = APIRouter(include_in_schema=False)

SWAGGER = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Telecom CDP API</title>
  <link rel="icon" href="/docs/static/favicon.png">
  <link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/static/swagger-ui-bundle.js"></script>
  <script src="/ui/static/docs.js"></script>
</body>
</html>
"""

REDOC = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Telecom CDP API</title>
  <link rel="icon" href="/docs/static/favicon.png">
</head>
<body>
  <redoc spec-url="/openapi.json"></redoc>
  <script src="/docs/static/redoc.standalone.js"></script>
</body>
</html>
"""


def install(app: FastAPI) -> None:
    """/docs, /redoc and the renderers' files (the app is built with its own docs off)."""
    app.include_router(router)
    app.mount("/docs/static", StaticFiles(directory=RENDERERS), name="docs-static")


@router.get("/docs")
def swagger() -> HTMLResponse:
    return HTMLResponse(SWAGGER)


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return HTMLResponse(REDOC)
