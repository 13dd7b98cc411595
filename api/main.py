"""The serving API: `create_app(settings)` builds the FastAPI app; its lifespan loads the gold
snapshot and keeps it fresh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from api import errors, metrics, openapi
from api.fastpath import LookupFastPath
from api.publisher import KafkaPublisher
from api.ratelimit import RateLimits
from api.routes import (
    audit,
    collect,
    docs,
    events,
    health,
    persons,
    profiles,
    segments,
    status,
    ui,
)
from api.security import SecurityHeaders
from api.snapshot import SnapshotHolder
from pipelines.activation.events import EventStore
from pipelines.activation.push import PushStore
from pipelines.activation.segment_store import SegmentStore
from pipelines.config import Settings, package_version
from pipelines.lakehouse.reader import LakeReader
from pipelines.ops.audit import AuditLog
from pipelines.ops.keys import KeyStore
from pipelines.profile.build import check_policy, profile_schema
from pipelines.profile.consent import compile_rules
from pipelines.profile.rules import RuleCompiler

LOG = logging.getLogger("cdp.api")


def create_app(settings: Settings) -> FastAPI:
    """The app for one process: keys, compiled consent rules, and a snapshot reloaded when the
    gold Delta version changes (every `api.snapshot_poll_s`)."""
    check_policy(settings)
    app = FastAPI(
        title="Telecom CDP API",
        version=package_version(),
        description="Consent-aware profile lookups for channels. Every route but health needs "
        "an API key in X-API-Key.",
        lifespan=_lifespan(settings),
        docs_url=None,  # served by api/routes/docs.py: offline, no inline script
        redoc_url=None,
    )
    errors.install(app)
    app.state.settings = settings
    app.state.keys = KeyStore(settings.database_url)
    app.state.audit = AuditLog(settings.database_url)
    app.state.rules = compile_rules(settings.policy)
    app.state.rate_limits = RateLimits(settings.api.rate_limits)
    app.state.segments = SegmentStore(settings.database_url)
    app.state.events = EventStore(settings.database_url)
    app.state.pushes = PushStore(app.state.events)
    app.state.publisher = (
        KafkaPublisher(settings.source.kafka, settings.contracts)
        if settings.source.kind == "kafka"
        else None
    )
    app.state.rule_compiler = RuleCompiler(settings.policy, profile_schema(settings.policy))
    openapi.document(app, settings, app.state.rule_compiler)
    app.state.snapshots = SnapshotHolder(LakeReader(settings.paths.lake_root), settings.policy)
    app.include_router(health.router)
    app.include_router(profiles.router)
    app.include_router(audit.router)
    app.include_router(persons.router)
    app.include_router(collect.router)
    app.include_router(status.router)
    app.include_router(segments.router)
    app.include_router(events.router)
    ui.install(app)
    docs.install(app)
    app.add_middleware(LookupFastPath, api=app)
    # outermost: times both lookup paths
    metrics.install(app, app.state.snapshots, app.state.events)
    app.add_middleware(SecurityHeaders)  # outermost: every answer, the fast path's included
    return app


def _lifespan(
    settings: Settings,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start: follow gold (every `api.snapshot_poll_s`). Stop: close the snapshot, deliver the
    collector's queued events and write every queued audit record."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder: SnapshotHolder = app.state.snapshots

        async def poll() -> None:
            while True:
                try:
                    await asyncio.to_thread(holder.refresh)
                except FileNotFoundError:
                    pass  # no gold yet: /readyz says so
                except Exception:  # the next poll tries again; the current snapshot serves on
                    LOG.exception("the snapshot could not follow gold")
                await asyncio.sleep(settings.api.snapshot_poll_s)

        task = asyncio.create_task(poll())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            holder.close()
            if app.state.publisher is not None:
                app.state.publisher.close()
            app.state.audit.close()  # a clean shutdown writes every queued audit record

    return lifespan
