"""Alembic environment for the store's schema (online migrations only).

`server.store.schema.upgrade_schema` runs this with an open connection in `config.attributes["connection"]`.
To write a new revision, change the tables in `server/store/schema.py`, then from the repository root:

    alembic -c server/migrations/alembic.ini -x url=sqlite:///data/stagechat.db revision --autogenerate -m "what"

and review the generated file (autogenerate misses some changes, e.g. renamed columns).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from server.store.schema import Base

config = context.config


def run(connection: sa.Connection) -> None:
    # Batch mode: SQLite cannot ALTER most things in place, so Alembic copies the table instead.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database with -x url=…")
    from server.store.engine import create_store_engine

    with create_store_engine(url).connect() as conn:
        run(conn)
        conn.commit()
