"""Alembic migrations of the store, shipped as package data and run programmatically by ``Store.open``.

There is no ``alembic.ini``: ``orchestrator.adapters.store`` builds the ``Config`` in code and hands the
open connection to ``env.py`` through ``config.attributes["connection"]``. To author a new revision,
copy ``versions/0001_schema_v1.py`` and bump ``revision`` / ``down_revision``.
"""
