"""The store's plain records: the prompt hash, and that they (and the serving path that uses them)
load no SQLAlchemy, while `server.store` still offers every name, the SQLAlchemy ones on first use."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from server.store.records import prompt_hash

REPO = Path(__file__).resolve().parents[2]


def test_prompt_hash_is_canonical():
    assert prompt_hash([{"role": "user", "content": "hi"}]) == prompt_hash([{"content": "hi", "role": "user"}])
    assert prompt_hash("hi") != prompt_hash([{"role": "user", "content": "hi"}])


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_records_and_the_serving_path_import_no_sqlalchemy():
    out = _run("""
        import sys
        import server.store.records
        from server.store import GenerationRecord, StoreError, prompt_hash  # the package's plain names
        print("records", "sqlalchemy" in sys.modules)
        import server.serving, server.generation_log, server.protocol, server.errors, server.export
        import server.leaderboard, server.routes.feedback, server.routes.leaderboard, server.routes.ws
        print("serving", "sqlalchemy" in sys.modules)
    """)
    assert out.split() == ["records", "False", "serving", "False"]


def test_the_package_still_offers_every_name():
    import server.store
    from server.store import Store, StoreError, records, schema, store

    assert Store is store.Store and StoreError is records.StoreError
    assert server.store.Base is schema.Base and server.store.upgrade_schema is schema.upgrade_schema
    assert all(hasattr(server.store, name) for name in server.store.__all__)
    with pytest.raises(AttributeError):
        server.store.no_such_name  # noqa: B018 - the look-up is the test
