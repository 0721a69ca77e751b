"""What every part of the store shares: one engine, a reader's and a writer's sessions, and the
look-up of a logged answer that every rating starts from.

What it knows: SQLAlchemy sessions on the engine `server/store/engine.py` makes, and that writers
take SQLite's write lock up front (`sqlite_begin="IMMEDIATE"`). The store's methods live in the
mixins built on this class (`generations.py`, `feedback.py`, `reads.py`); `Store` joins them.

What it does not know: what is written or read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from server.store.engine import create_store_engine
from server.store.records import InvalidFeedback, UnknownResponse
from server.store.schema import GenerationRow, upgrade_schema


class StoreBase:
    """An engine and its sessions. Safe to share between threads: each method opens its own session."""

    def __init__(self, url: str, *, upgrade: bool = True):
        self.url = url
        self.engine = create_store_engine(url)
        if upgrade:
            upgrade_schema(self.engine)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(sqlite_begin="IMMEDIATE"), expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            yield session

    @staticmethod
    def _generation_row(session: Session, response_id: str, param: str) -> GenerationRow:
        if not isinstance(response_id, str):
            raise InvalidFeedback(f"'{param}' must hold response id strings.", param)
        row = session.get(GenerationRow, response_id)
        if row is None:
            raise UnknownResponse(f"No response with id {response_id!r} was logged by this server.", param)
        return row
