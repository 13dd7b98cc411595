"""The event API: webhook subscriptions (with their dead letters) and a resumable server-sent
event stream. Channel keys receive their channel's events, consent-filtered; steward and admin
keys receive the ops alerts."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from pydantic import BaseModel, BeforeValidator, Field, HttpUrl, StrictInt
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.deps import CallerDep
from api.errors import KEYED, StrictRoute, error, invalid
from pipelines.activation.delivery import Visibility
from pipelines.activation.events import (
    EVENT_TYPES,
    Event,
    EventStore,
    FilterError,
    NotForYouError,
    Subscription,
    check_subscription,
)
from pipelines.ops.keys import Caller

router = APIRouter(tags=["events"], responses=KEYED, route_class=StrictRoute)
ERRORS: dict[int | str, dict[str, Any]] = {
    403: error("The key may not receive these events"),
    404: error("No such subscription of this key"),
    422: error("An unknown event type or filter field; `field` names it"),
}
HEARTBEAT_S = 15.0  # a comment line this often keeps idle proxies open
RETRY_MS = 1000  # how long a client waits before reconnecting
# Sequence numbers are SQL integers: a larger `since` could not be compared, only refused.
MAX_SEQ = 2**63 - 1


URL = re.compile(r"https?://[!-~]+")  # what the OpenAPI document promises (api/openapi.py)


def _ascii_url(value: Any) -> Any:
    if not isinstance(value, str) or not URL.fullmatch(value):
        raise ValueError("expected an http(s) URL in ASCII (a non-ASCII host in punycode)")
    return value


class SubscriptionIn(BaseModel):
    event_types: list[str] = Field(description=f"Any of {sorted(EVENT_TYPES)}")
    filter: dict[str, Any] = Field(
        default_factory=dict,
        description='Field -> value or list of values, e.g. {"segment_id": "seg_..."} or '
        '{"direction": "up"}; `person_id` and the event types\' payload fields',
    )
    url: Annotated[HttpUrl, BeforeValidator(_ascii_url)] = Field(
        description="Where signed deliveries are POSTed (http or https, ASCII: punycode hosts)"
    )
    secret: str = Field(min_length=16, max_length=200, description="Signs each delivery (HMAC)")


# A delivery id: a positive database key, below 2**53 so every JSON parser (and the JSON Schema
# bound itself) holds it exactly; a larger one names no message and is refused, not a 500.
def _whole(value: Any) -> Any:
    """JSON Schema's integers include 3.0: take a whole float as the integer it is (a string
    or a boolean stays refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


DeliveryId = Annotated[StrictInt, Field(ge=1, le=2**53), BeforeValidator(_whole)]


class RedeliverIn(BaseModel):
    ids: list[DeliveryId] | None = Field(
        None, max_length=10_000, description="Dead messages to resend (default: all)"
    )


def _store(request: Request) -> EventStore:
    store: EventStore = request.app.state.events
    return store


def _domain(event: Event) -> str:
    """The steward domain an ops event is for: its source's."""
    return str(event.payload.get("source", ""))


def _own_domain(who: Caller, filter_: dict[str, Any]) -> dict[str, Any]:
    """A steward of one domain subscribes to that domain's ops events only: the filter gets
    `source` = the domain (asking for another source is refused), as the SSE stream filters."""
    if who.role != "steward" or who.channel is None:
        return filter_
    asked = filter_.get("source", who.channel)
    if (asked if isinstance(asked, list) else [asked]) != [who.channel]:
        raise NotForYouError(
            "filter.source",
            f"this key stewards {who.channel!r}: its ops events are those of {who.channel!r} only",
        )
    return {**filter_, "source": who.channel}


def _audience(who: Caller) -> bool:
    """True for keys that receive ops events (steward, admin); channels receive the rest."""
    if who.role in ("steward", "admin"):
        return True
    if who.role == "channel" and who.channel:
        return False
    raise HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"events go to channel keys and to steward or admin keys, not {who.role!r}",
    )


async def _own(request: Request, subscription_id: str, who: Caller) -> Subscription:
    sub = await run_in_threadpool(_store(request).subscription, subscription_id)
    if sub is None or not sub.active or (sub.owner != who.key_id and who.role != "admin"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no subscription {subscription_id!r}")
    return sub


@router.post(
    "/v1/subscriptions", status_code=201, summary="Subscribe a webhook to events", responses=ERRORS
)
async def subscribe(request: Request, body: SubscriptionIn, who: CallerDep) -> dict[str, Any]:
    """Events of `event_types` that pass `filter` are POSTed to `url` in order per person, in
    batches (`{"subscription_id", "events": [...]}`), signed with `secret` the Standard
    Webhooks way (`webhook-id`, `webhook-timestamp`, `webhook-signature`), retried with
    exponential backoff and parked as dead letters after the configured attempts. Delivery
    is at least once: de-duplicate by `event_id`."""
    ops = _audience(who)
    try:
        check_subscription(body.event_types, body.filter, ops)
        scoped = _own_domain(who, body.filter) if ops else body.filter
    except NotForYouError as err:
        raise HTTPException(403, {"field": err.field, "error": err.message}) from None
    except FilterError as err:
        raise invalid(err.field, err.message) from None
    sub = await run_in_threadpool(
        _store(request).subscribe,
        who.key_id,
        None if ops else who.channel,
        body.event_types,
        scoped,
        str(body.url),
        body.secret,
    )
    return sub.as_json()


@router.get("/v1/triggers", summary="The real-time triggers and how often they fired")
async def triggers(request: Request, _who: CallerDep) -> list[dict[str, Any]]:
    """Every trigger of conf/triggers.yaml (rule, purpose, window, fields) with the events it
    logged in the last 24 hours and 7 days. Subscribe to `trigger.fired` (filter `trigger`)."""
    settings = request.app.state.settings
    store = _store(request)
    now = datetime.now(UTC)
    out = []
    for name, t in settings.triggers.items():
        counts = await run_in_threadpool(store.fired, name, now)
        out.append({"name": name, **t.model_dump(), **counts})
    return out


@router.get("/v1/subscriptions", summary="This key's subscriptions", responses=ERRORS)
async def list_subscriptions(request: Request, who: CallerDep) -> list[dict[str, Any]]:
    _audience(who)
    owner = None if who.role == "admin" else who.key_id
    subs = await run_in_threadpool(_store(request).subscriptions, owner)
    stats = await run_in_threadpool(_store(request).queue_stats)
    return [{**s.as_json(), "queue": _public(stats.get(s.queue))} for s in subs]


def _public(stats: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(stats or {"pending": 0, "delivered": 0, "dead": 0})
    if "oldest_pending_at" in out:
        out["oldest_pending_at"] = out["oldest_pending_at"].isoformat()
    return out


@router.delete(
    "/v1/subscriptions/{subscription_id}",
    status_code=204,
    summary="Stop a subscription (its pending deliveries are dropped)",
    responses=ERRORS,
)
async def unsubscribe(request: Request, subscription_id: str, who: CallerDep) -> None:
    await _own(request, subscription_id, who)
    await run_in_threadpool(_store(request).deactivate, subscription_id)


@router.get(
    "/v1/subscriptions/{subscription_id}/deliveries",
    summary="A subscription's deliveries, newest first (status=dead: its dead letters)",
    responses=ERRORS,
)
async def deliveries(
    request: Request,
    subscription_id: str,
    who: CallerDep,
    state: Annotated[
        str | None, Query(alias="status", pattern="^(pending|delivered|dead)$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    sub = await _own(request, subscription_id, who)
    found: list[dict[str, Any]] = await run_in_threadpool(
        _store(request).messages, sub.queue, state, limit
    )
    return found


@router.post(
    "/v1/subscriptions/{subscription_id}/redeliver",
    summary="Send dead letters again",
    responses=ERRORS,
)
async def redeliver(
    request: Request, subscription_id: str, body: RedeliverIn, who: CallerDep
) -> dict[str, int]:
    sub = await _own(request, subscription_id, who)
    n = await run_in_threadpool(_store(request).redeliver, sub.queue, body.ids)
    return {"redelivered": n}


@router.get(
    "/v1/events/stream",
    summary="Server-sent events, resumable with Last-Event-ID",
    responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    request: Request,
    who: CallerDep,
    types: Annotated[list[str] | None, Query(description="Only these event types")] = None,
    last_event_id: Annotated[
        str,
        Header(description="The `id` of the last event received", pattern=r"^[0-9]{1,18}$"),
    ] = "",
    since: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Start after this seq")
    ] = None,
) -> EventSourceResponse:
    """Every event this key may receive, in log order, each with `id: <seq>`; a reconnect with
    `Last-Event-ID` (or `?since=`) continues right after it, without gaps. New events arrive
    within the delivery poll interval; a comment line every 15 s keeps idle proxies open."""
    ops = _audience(who)
    wanted = types or [t for t, (p, _) in EVENT_TYPES.items() if (p == "ops") == ops]
    for t in wanted:
        if t not in EVENT_TYPES:
            raise invalid("types", f"unknown event type {t!r}")
    try:
        start = int(last_event_id) if last_event_id else (since or 0)
        if not 0 <= start <= MAX_SEQ:
            raise ValueError(start)
    except ValueError:
        raise invalid("Last-Event-ID", f"expected an event seq, got {last_event_id!r}") from None
    store, settings = _store(request), request.app.state.settings
    poll = settings.api.events.poll_s
    channel = None if ops else who.channel

    async def frames() -> AsyncIterator[ServerSentEvent]:
        after = start
        yield ServerSentEvent(retry=RETRY_MS)
        while True:  # sse-starlette ends it when the client leaves or the server stops
            events = await run_in_threadpool(store.events_after, after, 500, wanted)
            if not events:
                await asyncio.sleep(poll)
                continue
            seen = Visibility(settings, request.app.state.snapshots.current)
            await run_in_threadpool(seen.prepare, events)
            for e in events:
                # ops events name their source: a source steward gets their source's only
                if seen.allows(channel, e) and (not ops or who.stewards(_domain(e))):
                    data = json.dumps(e.as_json())
                    yield ServerSentEvent(data, event=e.event_type, id=str(e.seq))
            after = events[-1].seq

    return EventSourceResponse(frames(), ping=HEARTBEAT_S, sep="\n")
