"""Alembic environment: online only, on the connection that ``Store.open`` passes in."""

from __future__ import annotations

from alembic import context

from orchestrator.adapters.store import METADATA

connection = context.config.attributes.get("connection")
if connection is None:
    # The alembic CLI would arrive here without a connection; the store is the only supported entry point.
    raise RuntimeError(
        "run migrations through orchestrator.adapters.store.Store.open(url), not the alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=METADATA,
    # SQLite cannot ALTER most things in place; batch mode lets later revisions change columns.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
