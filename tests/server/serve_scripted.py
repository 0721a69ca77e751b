"""The real stagechat app (routes, service, store by URL) on scripted engines, as a server process.

For tests that need several server processes but no model, such as replicas sharing one PostgreSQL
store (test_replicas.py): run as `python -m tests.server.serve_scripted --port P`, with the
store's URL in `STAGECHAT_DATABASE_URL`. Only the engines are fake (`server.fake_engine`).
"""

from __future__ import annotations

import argparse


def main() -> None:
    import uvicorn

    from server.app import create_app
    from server.fake_engine import ScriptedEngine
    from server.pool import EnginePool
    from server.registry import Registry
    from server.settings import Settings
    from server.store import Store
    from tests.conftest import FAKE_REGISTRY

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    settings = Settings.from_env()
    pool = EnginePool(
        Registry.model_validate(FAKE_REGISTRY), lambda spec: ScriptedEngine(speculative_method=spec.speculative_method)
    )
    app = create_app(settings, pool, store=Store(settings.resolved_database_url), with_ui=False)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
