"""Alembic's entry point: migrate the connection the store hands over (or the URL given
to the ``alembic`` command through ``-x url=...``, for an operator)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from pipeline.history.tables import Base

config = context.config
connection = config.attributes.get("connection")


def run(connection) -> None:
    # batch mode: SQLite alters tables by copying them
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    with create_engine(url).connect() as opened:
        run(opened)
