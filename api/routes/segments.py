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
from api.errors import KEYED, StrictRoute, error, invalid
from api.routes.profiles import projected
from pipelines.activation.push import PushStore, current_members
from pipelines.activation.segment_store import Segment, SegmentStore
from pipelines.activation.segments import preview
from pipelines.profile.rules import RuleCompiler, RuleError

router = APIRouter(
    prefix="/v1/segments", tags=["segments"], responses=KEYED, route_class=StrictRoute
)
ERRORS: dict[int | str, dict[str, Any]] = {
    403: error("Not a marketing or admin key, or the channel does not hold the purpose"),
    404: error("No such segment"),
    422: error("The rule, purpose or channel is invalid; `field` names the rule node"),
    503: error("No gold snapshot loaded yet"),
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
        raise invalid("purpose", f"unknown purpose {purpose!r}; one of {sorted(policy.purposes)}")
    try:
        request.app.state.rule_compiler.compile(rule)
    except RuleError as err:
        raise invalid(err.path, err.message) from None


async def _segment_for(request: Request, segment_id: str, channel: str) -> Segment:
    """The segment, checked for `channel`: 404 when unknown, 422 when the channel is unknown
    or does not hold the segment's purpose."""
    policy = request.app.state.settings.policy
    seg: Segment | None = await run_in_threadpool(_store(request).get, segment_id)
    if seg is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment {segment_id!r}")
    held = policy.channels.get(channel)
    if held is None:
        raise invalid("channel", f"unknown channel {channel!r}; one of {sorted(policy.channels)}")
    if seg.purpose not in held.purposes:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            {
                "field": "channel",
                "error": f"channel {channel} does not hold purpose {seg.purpose!r} "
                f"(it holds {held.purposes}): the policy forbids sending it this segment",
            },
        )
    return seg


async def _preview(request: Request, snap: Any, purpose: str, rule: Any) -> dict[str, Any]:
    _checked(request, purpose, rule)
    compiler: RuleCompiler = request.app.state.rule_compiler
    compiled = compiler.compile(rule)
    policy = request.app.state.settings.policy

    def run() -> Any:
        return preview(snap.db.cursor(), compiled, purpose, policy, compiler)

    p = await run_in_threadpool(run)
    return {
        "members": p.members,
        "reachable": p.consented,
        "sample": p.sample,
        "churn_risk": p.churn_risk,
        "churn_risk_unknown": p.churn_risk_unknown,
        "value_segment": p.value_segment,
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


@router.get("/catalogue", summary="What rules may use: attributes, purposes and channels")
async def catalogue(request: Request, _who: MarketerDep) -> dict[str, Any]:
    """Attributes with their kind and operators; purposes with their legal basis; channels
    with the purposes they hold (a segment can be pushed to a channel holding its purpose)."""
    policy = request.app.state.settings.policy
    return {
        "attributes": request.app.state.rule_compiler.catalogue(),
        "purposes": {p: spec.legal_basis for p, spec in policy.purposes.items()},
        "channels": {c: spec.purposes for c, spec in policy.channels.items()},
    }


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
    seg = await _segment_for(request, segment_id, channel)
    held = settings.policy.channels[channel]
    compiled = request.app.state.rule_compiler.compile(seg.rule)
    members = await run_in_threadpool(current_members, snap.db.cursor(), compiled, seg.purpose)
    ids = list(members)
    state = request.app.state
    as_channel = dataclasses.replace(who, channel=channel)
    columns = [a for a, ps in settings.policy.attributes.items() if set(ps) & set(held.purposes)]

    def bodies() -> Iterator[bytes]:
        for i in range(0, len(ids), EXPORT_CHUNK):
            yield b"".join(
                projected(state, as_channel, snap, snap.row(p), "segment_export") + b"\n"
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
                writer.writerow([doc["person_id"], *(csv_cell(attrs.get(c)) for c in columns)])
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()

    name = f"{segment_id}-v{seg.version}-{channel}.{fmt}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"', "X-Members": str(len(ids))}
    if fmt == "csv":
        return StreamingResponse(as_csv(), media_type="text/csv", headers=headers)
    return StreamingResponse(bodies(), media_type="application/x-ndjson", headers=headers)


def csv_cell(value: Any) -> str:
    """An attribute as spreadsheet text: lists joined by "; ", a record's fields as
    "name=value" joined by ", ", true/false, nothing for null (never JSON in a cell)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "; ".join(csv_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={csv_cell(v)}" for k, v in value.items() if v is not None)
    return str(value)


class PushIn(BaseModel):
    channel: str = Field(description="The channel to push to (its endpoint is in conf/api.yaml)")


@router.post(
    "/{segment_id}/push",
    status_code=202,
    summary="Send a channel who entered and exited the segment since its last push",
    responses={
        **ERRORS,
        202: {"description": "Audited and queued; `GET .../pushes` shows its delivery"},
    },
)
async def push(
    request: Request, segment_id: str, body: PushIn, who: MarketerDep, snap: SnapshotDep
) -> dict[str, Any]:
    """The difference between the segment's reachable members now and what the channel was last
    sent: entered members as that channel may see them, exited members by id. The push is
    audited (segment version, purpose, legal basis, and per member the consent state used) and
    delivered by the deliverer: signed, retried with backoff, in order per channel."""
    state = request.app.state
    seg = await _segment_for(request, segment_id, body.channel)
    store: PushStore = state.pushes
    compiled = state.rule_compiler.compile(seg.rule)
    plan = await run_in_threadpool(
        store.plan,
        snap.db.cursor(),
        compiled,
        seg,
        body.channel,
        state.settings.policy,
        snap.version,
    )
    as_channel = dataclasses.replace(who, channel=body.channel)
    size = state.settings.api.events.push_part_members
    chunks = [plan.entered[i : i + size] for i in range(0, len(plan.entered), size)] or [[]]
    head = {
        "push_id": plan.push_id,
        "segment": {
            "segment_id": seg.segment_id,
            "name": seg.name,
            "version": seg.version,
            "purpose": seg.purpose,
            "legal_basis": plan.legal_basis,
        },
        "channel": body.channel,
        "snapshot_version": snap.version,
        "parts": len(chunks),
    }

    def render() -> list[bytes]:
        parts = []
        for n, chunk in enumerate(chunks, start=1):
            entered = b",".join(
                projected(state, as_channel, snap, snap.row(p), "segment_push") for p in chunk
            )
            exited = plan.exited if n == len(chunks) else []
            doc = json.dumps({**head, "part": n, "exited": exited})
            parts.append(doc[:-1].encode() + b',"entered":[' + entered + b"]}")
        store.record(plan, parts, who.key_id)
        return parts

    parts = await run_in_threadpool(render)
    return {
        **head,
        "parts": len(parts),
        "members": len(plan.members),
        "entered": len(plan.entered),
        "exited": len(plan.exited),
        "delivery": "pending",
    }


@router.get(
    "/{segment_id}/pushes", summary="A segment's pushes and their delivery", responses=ERRORS
)
async def pushes(request: Request, segment_id: str, _who: MarketerDep) -> list[dict[str, Any]]:
    if await run_in_threadpool(_store(request).get, segment_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no segment {segment_id!r}")
    found: list[dict[str, Any]] = await run_in_threadpool(
        request.app.state.pushes.pushes, segment_id
    )
    return found
