"""One shape for every error the API answers, `{"detail": "...", "field": "..."|null}`, and a
strict reading of JSON bodies on every route.

`detail` says what is wrong and how to fix it; `field` names the parameter, body field or rule
node at fault when there is one (FastAPI's own validation errors included, which it would
otherwise answer as a list). Bodies are decoded as UTF-8 and RFC 8259 JSON (NaN and Infinity are
refused), so a malformed body is a 400 naming the problem, never a 500."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from api.bodies import reject_constant
from api.models import ErrorPublic


def error(description: str) -> dict[str, Any]:
    """An OpenAPI response documented with the one error shape."""
    return {"model": ErrorPublic, "description": description}


# Every route that needs a key answers these; body routes also 400.
KEYED: dict[int | str, dict[str, Any]] = {
    400: error("The body is not UTF-8 or not JSON (RFC 8259: no NaN or Infinity)"),
    401: error("Missing, unknown, revoked or expired API key (send it as X-API-Key)"),
    422: error("A parameter or the body is invalid; `field` names it"),
}


def invalid(field: str, message: str) -> HTTPException:
    """A 422 naming the field (or rule node) at fault."""
    return HTTPException(422, {"field": field, "error": message})


def _body(detail: Any) -> dict[str, Any]:
    if isinstance(detail, dict) and "error" in detail:
        field = str(detail.get("field") or "")
        return {
            "detail": f"{field}: {detail['error']}" if field else detail["error"],
            "field": field,
        }
    return {"detail": str(detail), "field": None}


def _allowed(request: Request) -> str:
    """The methods the OpenAPI document lists for this path (Starlette's 405 names only the
    first matching route's); /v1/segments/preview is its own path, not a segment id."""
    matches: dict[int, set[str]] = {}  # by parameter count: the most specific template wins
    for template, operations in request.app.openapi()["paths"].items():
        regex, _, params = compile_path(template)
        if regex.match(request.url.path):
            matches.setdefault(len(params), set()).update(m.upper() for m in operations)
    methods = matches[min(matches)] if matches else set()
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed(request)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    return JSONResponse(_body(exc.detail), status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        problems.append((where, f"{where}: {err['msg']}"))
    field = problems[0][0] if problems else None
    detail = "; ".join(p for _, p in problems) or "invalid request"
    return JSONResponse({"detail": detail, "field": field}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


class StrictRequest(Request):
    """A request whose JSON body is read as UTF-8 and RFC 8259 only."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body.decode("utf-8"), parse_constant=reject_constant)
            except UnicodeDecodeError as exc:
                raise HTTPException(400, f"body is not UTF-8 (byte offset {exc.start})") from None
            except json.JSONDecodeError as exc:
                raise HTTPException(
                    400, f"body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                ) from None
            except RecursionError:
                raise HTTPException(400, "body is nested too deeply") from None
            except ValueError as exc:
                raise HTTPException(400, f"body is not JSON: {exc}") from None
        return self._json


class StrictRoute(APIRoute):
    """Routes that read their JSON body through StrictRequest (set as each router's
    `route_class`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictRequest(request.scope, request.receive))

        return strict
