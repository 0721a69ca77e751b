"""The real stagechat app (vLLM engines, SQLite store, UI) for the browser tests, with one addition:
each request's first token is logged with its wall-clock time as it leaves the engine, so a test can
measure how long the browser took to paint it. Run as a script (vLLM spawns processes, hence the
`__main__` guard); the app itself is `server.app.create_app`, unchanged, run as `stagechat serve` runs it.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import aclosing
from pathlib import Path


def timed(factory, log_path: Path):
    """Wrap an engine factory: every engine's `generate` notes when its first batch came out."""

    def make(spec):
        engine = factory(spec)
        generate = engine.generate

        async def first_token_logged(prompt_token_ids, settings, request_id, adapter=None):
            first = True
            # aclosing: closing this wrapper (a cancelled request) must close, and so abort, the real stream.
            async with aclosing(generate(prompt_token_ids, settings, request_id, adapter)) as batches:
                async for batch in batches:
                    if first:
                        first = False
                        with log_path.open("a") as f:
                            f.write(json.dumps({"request_id": request_id, "t": time.time()}) + "\n")
                    yield batch

        engine.generate = first_token_logged
        return engine

    return make


def main() -> None:
    from cli.serve import run_uvicorn
    from server.app import create_app
    from server.pool import EnginePool, vllm_factory
    from server.registry import load_registry
    from server.settings import Settings
    from server.store import Store

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first-tokens", type=Path, required=True)
    args = parser.parse_args()
    settings = Settings.from_env(registry_path=args.config)
    registry = load_registry(settings.registry_path, data_dir=settings.data_dir)
    pool = EnginePool(registry, timed(vllm_factory, args.first_tokens), max_live_engines=1)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, pool, store=Store(settings.resolved_database_url))
    run_uvicorn(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
