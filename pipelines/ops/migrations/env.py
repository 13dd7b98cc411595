"""Alembic's entry for the ops store: runs migrations on the connection `pipelines.ops.store` hands
over (inside its lock and transaction). New revisions are written with `cdp db revision`."""

from __future__ import annotations

from alembic import context

from pipelines.ops.store import metadata, store_modules

config = context.config
if config.attributes.get("autogenerate"):
    store_modules()  # the tables register on the shared metadata when their modules load
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
