"""Alembic environment: runs against the connection CIAMS hands over, or the URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from ciams.db import Base

config = context.config
if config.attributes.get("autogenerate"):
    # Only autogenerate needs every domain's tables; upgrades run the scripts alone,
    # so starting the archive does not import every domain.
    import ciams.models  # noqa: F401
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
