"""Segments for marketing (marketing or admin keys): define a rule over the policy's attributes,
preview its members on the current snapshot, save it with its purpose, change it (a new
version each time)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import MarketerDep, SnapshotDep
from api.routes.profiles import projected
from pipelines.segment_store import SegmentStore
from pipelines.segments import RuleCompiler, RuleError, preview

router = APIRouter(prefix="/v1/segments", tags=["segments"])
ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "The key is not a marketing or admin key"},
    422: {"description": "The rule or purpose is invalid; `detail.node` names the rule node"},
}


class RuleIn(BaseModel):
    purpose: str = Field(description="The purpose the segment is for (e.g. marketing)")
    rule: Any = Field(
        description='A rule tree: {"and"|"or": [...]}, {"not": ...} or '
        '{"attr", "op", "value"|"values"|"low"+"high"|"days"} (see docs/segments.md)'
    )


class SegmentIn(RuleIn):
    name: str = Field(min_length=1, max_length=200)


class RuleUpdate(BaseModel):
    rule: Any


def _store(request: Request) -> SegmentStore:
    store: SegmentStore = request.app.state.segments
    return store


def _checked(request: Request, purpose: str, rule: Any) -> None:
    """422 naming the node when the rule does not compile, or the purpose is unknown."""
    policy = request.app.state.settings.policy
    if purpose not in policy.purposes:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            {
                "node": "purpose",
                "error": f"unknown purpose {purpose!r}; one of {sorted(policy.purposes)}",
            },
        )
    try:
        request.app.state.rule_compiler.compile(rule)
    except RuleError as err:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY, {"node": err.path, "error": err.message}
        ) from None


async def _preview(request: Request, snap: Any, purpose: str, rule: Any) -> dict[str, Any]:
    _checked(request, purpose, rule)
    compiler: RuleCompiler = request.app.state.rule_compiler
    compiled = compiler.compile(rule)
    policy = request.app.state.settings.policy

    def run() -> Any:
        return preview(snap.db.cursor(), compiled, purpose, policy)

    p = await run_in_threadpool(run)
    return {
        "members": p.members,
        "reachable": p.consented,
        "sample": p.sample,
        "purpose": purpose,
        "snapshot_version": snap.version,
    }


@router.post("/preview", summary="Count a rule's members on the current snapshot", responses=ERRORS)
async def preview_rule(
    request: Request, body: RuleIn, _who: MarketerDep, snap: SnapshotDep
) -> dict[str, Any]:
    """`members`: profiles the rule matches; `reachable`: those whose consent (or contract) for
    the purpose is in force, which is who an export or push reaches; `sample`: a few of them."""
    return await _preview(request, snap, body.purpose, body.rule)


@router.post("", status_code=201, summary="Save a segment (version 1)", responses=ERRORS)
async def create(request: Request, body: SegmentIn, who: MarketerDep) -> dict[str, Any]:
    _checked(request, body.purpose, body.rule)
    seg = await run_in_threadpool(
        _store(request).create, body.name, body.purpose, body.rule, who.key_id
    )
    return seg.as_json()


@router.get("", summary="Every saved segment at its latest version", responses=ERRORS)
async def list_segments(request: Request, _who: MarketerDep) -> list[dict[str, Any]]:
    return [s.as_json() for s in await run_in_threadpool(_store(request).list)]


@router.get("/{segment_id}", summary="A segment and its version history", responses=ERRORS)
async def get_segment(request: Request, segment_id: str, _who: MarketerDep) -> dict[str, Any]:
    store = _store(request)
    seg = await run_in_threadpool(store.get, segment_id)
    if seg is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment {segment_id!r}")
    return {**seg.as_json(), "versions": await run_in_threadpool(store.versions, segment_id)}


@router.put("/{segment_id}", summary="Change a segment's rule (a new version)", responses=ERRORS)
async def update(
    request: Request, segment_id: str, body: RuleUpdate, who: MarketerDep
) -> dict[str, Any]:
    store = _store(request)
    current = await run_in_threadpool(store.get, segment_id)
    if current is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment {segment_id!r}")
    _checked(request, current.purpose, body.rule)
    seg = await run_in_threadpool(store.update, segment_id, body.rule, who.key_id)
    assert seg is not None
    return seg.as_json()


@router.get("/{segment_id}/preview", summary="A saved segment's members now", responses=ERRORS)
async def preview_segment(
    request: Request, segment_id: str, _who: MarketerDep, snap: SnapshotDep
) -> dict[str, Any]:
    seg = await run_in_threadpool(_store(request).get, segment_id)
    if seg is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment {segment_id!r}")
    return {**await _preview(request, snap, seg.purpose, seg.rule), "version": seg.version}


EXPORT_CHUNK = 500  # members rendered per chunk of the streamed body


@router.get(
    "/{segment_id}/export",
    summary="The segment's reachable members as a channel may see them (JSON lines or CSV)",
    responses={**ERRORS, 200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
async def export(
    request: Request,
    segment_id: str,
    who: MarketerDep,
    snap: SnapshotDep,
    channel: Annotated[str, Query(description="The channel the export is for")],
    fmt: Annotated[Literal["jsonl", "csv"], Query(alias="format")] = "jsonl",
) -> StreamingResponse:
    """Only members whose consent (or contract) for the segment's purpose is in force, and of
    each only the attributes `channel` may see for that person; every member exported is
    audited like a lookup by that channel."""
    settings = request.app.state.settings
    seg = await run_in_threadpool(_store(request).get, segment_id)
    if seg is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment {segment_id!r}")
    held = settings.policy.channels.get(channel)
    if held is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            {
                "node": "channel",
                "error": f"unknown channel {channel!r}; one of {sorted(settings.policy.channels)}",
            },
        )
    if seg.purpose not in held.purposes:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            {
                "node": "channel",
                "error": f"channel {channel} does not hold purpose "
                f"{seg.purpose!r} (it holds {held.purposes})",
            },
        )
    compiled = request.app.state.rule_compiler.compile(seg.rule)
    in_force = f'coalesce("consent_{seg.purpose}_granted", false)'  # purpose from the policy
    sql = f"SELECT person_id FROM profiles WHERE {compiled.sql} AND {in_force} ORDER BY person_id"
    ids = await run_in_threadpool(
        lambda: [p for (p,) in snap.db.cursor().execute(sql, compiled.params).fetchall()]
    )
    state = request.app.state
    as_channel = dataclasses.replace(who, channel=channel)
    columns = [a for a, ps in settings.policy.attributes.items() if set(ps) & set(held.purposes)]

    def bodies() -> Iterator[bytes]:
        for i in range(0, len(ids), EXPORT_CHUNK):
            yield b"".join(
                projected(state, as_channel, snap.rendered, snap.row_of[p], "segment_export")
                + b"\n"
                for p in ids[i : i + EXPORT_CHUNK]
            )

    def as_csv() -> Iterator[bytes]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["person_id", *columns])
        for chunk in bodies():
            for line in chunk.splitlines():
                doc = json.loads(line)
                attrs = doc["attributes"]
                writer.writerow(
                    [doc["person_id"]]
                    + [
                        json.dumps(attrs[c])
                        if isinstance(attrs.get(c), list | dict)
                        else attrs.get(c, "")
                        for c in columns
                    ]
                )
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()

    name = f"{segment_id}-v{seg.version}-{channel}.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "X-Members": str(len(ids))}
    if fmt == "csv":
        return StreamingResponse(as_csv(), media_type="text/csv", headers=headers)
    return StreamingResponse(bodies(), media_type="application/x-ndjson", headers=headers)
