"""The HTTP collector: events from a source, stored durably before 202: written to its landing
folder, or (`source.kind: kafka`) acknowledged by the brokers of its topic (api/publisher.py).

The body is one JSON event (application/json) or a batch, one event per line
(application/x-ndjson), decoded strictly and bounded (api/bodies.py). The file is written under
a hidden name, flushed to disk and renamed, so the streaming pipeline never sees half a file; the
contract checks happen in silver as for any landing file (a breach becomes a quarantine row,
never a lost event).
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel

from api.bodies import BodyError, Limits, parse_events
from api.deps import CallerDep
from api.errors import KEYED, StrictRoute
from api.publisher import KafkaPublisher, PublishError, TooLargeError

router = APIRouter(
    prefix="/v1/collect", tags=["collector"], responses=KEYED, route_class=StrictRoute
)


class Accepted(BaseModel):
    accepted: int
    file: str | None = None  # the landing file written (files)
    topic: str | None = None  # the topic the brokers acknowledged the batch on (kafka)


@router.post(
    "/{source}",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Accept events from a source (durable before the answer)",
    responses={
        400: {
            "description": "Not UTF-8; a line is not RFC 8259 JSON (NaN and Infinity are not), "
            "not an object, nested deeper than api.max_json_depth, or names another source"
        },
        403: {"description": "The key is not this source's key"},
        404: {"description": "No contract for this source"},
        429: {"description": "Over the key's collect rate (api.rate_limits), see Retry-After"},
        413: {
            "description": "Body over api.max_body_bytes, more events than api.max_events, a "
            "string over api.max_string_chars, or an event over the topic's message size"
        },
        503: {"description": "The brokers did not acknowledge the batch in time: send it again"},
    },
)
async def collect(source: str, request: Request, who: CallerDep) -> Accepted:
    settings = request.app.state.settings
    if source not in settings.contracts:
        raise HTTPException(404, f"no contract for source {source!r} (conf/contracts/)")
    if who.role != "source" or who.channel != source:
        raise HTTPException(403, f"posting events needs a key of source {source!r}")
    request.app.state.rate_limits.check("collect", who.key_id)
    limit = settings.api.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {declared} bytes; at most {limit} (api.max_body_bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"body over {limit} bytes (api.max_body_bytes)")
    api = settings.api
    limits = Limits(api.max_events, api.max_json_depth, api.max_string_chars)
    ndjson = "ndjson" in request.headers.get("content-type", "")
    try:
        events = parse_events(bytes(body), ndjson, source, limits)
    except BodyError as err:
        raise HTTPException(err.status, err.detail) from None
    publisher: KafkaPublisher | None = request.app.state.publisher
    if publisher is None:
        name = _land(settings.paths.landing_root / source, events)
        return Accepted(accepted=len(events), file=name)
    try:
        published = await publisher.publish(source, events)
    except TooLargeError as err:
        raise HTTPException(413, str(err)) from None
    except (PublishError, TimeoutError) as err:
        raise HTTPException(
            503,
            f"not stored: {err or 'no acknowledgement in time'}; send the batch again",
            headers={"Retry-After": "1"},
        ) from None
    return Accepted(accepted=published.events, topic=published.topic)


def _land(folder: Path, events: list[dict[str, Any]]) -> str:
    """Write, flush and fsync a hidden file, then rename it into view (atomic on POSIX)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    name = f"collect-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
    tmp = folder / f".{name}.tmp"
    with tmp.open("w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event, separators=(",", ":")) + "\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(folder / name)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)
    return name
