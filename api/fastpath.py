"""The lookup hot path in plain ASGI: `GET /v1/profiles/{id_type}/{id_value}` answered without
FastAPI's routing and dependency injection, which cost more than the lookup itself.

It answers only the common case: a channel key already in the key cache and within its rate, a
well-formed identifier, a person in the snapshot. It calls the same functions as the FastAPI route
(`valid`, `current_row`, `projected`), so the 200 body and the audit record are the same.
Everything else (no key, a key to verify against the database, 4xx, the 308 of a merged person,
no snapshot yet) falls through to the route, which owns every error and the OpenAPI document.
"""

from __future__ import annotations

from typing import get_args

from fastapi import FastAPI, HTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from api.routes.profiles import (
    PREFIX,
    IdType,
    current_row,
    lookup,
    projected,
    router,
    valid,
)
from pipelines.ops.keys import Caller

ID_TYPES = frozenset(get_args(IdType))
HEADERS = [(b"content-type", b"application/json")]


class LookupFastPath:
    """ASGI middleware in front of the app; see the module docstring."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.state = api.state
        self.prefix = PREFIX + "/"
        # the route's own object, so per-route metrics count both paths under one name
        self.route: BaseRoute = next(
            r for r in router.routes if getattr(r, "endpoint", None) is lookup
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix):
            body = self._answer(scope)
            if body is not None:
                scope["route"] = self.route
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [*HEADERS, (b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope) -> bytes | None:
        """The 200 body, or None when the route must answer."""
        if scope["method"] != "GET":
            return None
        parts = scope["path"][len(self.prefix) :].split("/")
        if len(parts) != 2 or parts[0] not in ID_TYPES or not parts[1]:
            return None
        who = self._caller(scope)
        snap = self.state.snapshots.current
        if who is None or snap is None:
            return None
        id_type, raw = parts
        try:
            value = valid(self.state.settings, id_type, raw)
        except HTTPException:
            return None
        row = current_row(snap, id_type, value)
        if row is None or self.state.rate_limits.retry_after("lookup", who.key_id) is not None:
            return None  # the route answers (and counts the request again: still over)
        return projected(self.state, who, snap, row, "lookup")

    def _caller(self, scope: Scope) -> Caller | None:
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                found = self.state.keys.verify_cached(value.decode("latin-1"))
                if isinstance(found, Caller) and found.role == "channel" and found.channel:
                    return found
                return None
        return None
