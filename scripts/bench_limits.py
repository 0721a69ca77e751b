"""How the admission limits behave under a burst, in figures (no model needed: scripted engines).

Serves the real app on scripted engines (30 ms per token, 20 tokens) under uvicorn on loopback with
`--max-concurrent-per-key 8`, `--tokens-per-minute-per-key 600` and `--max-queued-requests 32`,
then fires bursts of concurrent streamed chats: one key sending 64, four keys sending 16 each, and a
fresh key sending waves of 8 until its minute's tokens run out. Prints, per burst, how many were served and
refused (by which limit), how fast a 429 came back, and how many requests reached the engine.

    .venv/bin/python scripts/bench_limits.py [--json [FILE]]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from bench_common import add_json_argument, http_client, nan_if_empty, output, serving_in_thread, stream

LIMITS = {"max_concurrent_per_key": 8, "tokens_per_minute_per_key": 600, "max_queued_requests": 32}


def app_on_scripted_engines(settings_kwargs: dict) -> tuple[object, list]:
    """The real app on scripted engines (20 tokens at 30 ms each), keys key0..key3 and fresh; the
    engines it builds are appended to the list returned."""
    from server.app import create_app
    from server.fake_engine import ScriptedEngine
    from server.pool import EnginePool
    from server.registry import Registry
    from server.settings import Settings

    engines = []

    def factory(spec):
        engines.append(ScriptedEngine(" ".join(f"w{i}" for i in range(20)), delay=0.03, max_model_len=512))
        return engines[-1]

    registry = Registry.model_validate({"stages": {"base": {"model": "fake/base"}}})
    keys = frozenset({*(f"key{i}" for i in range(4)), "fresh"})
    app = create_app(
        Settings(data_dir=Path(tempfile.mkdtemp()), api_keys=keys, **settings_kwargs),
        EnginePool(registry, factory),
        with_ui=False,
    )
    return app, engines


REASONS = {
    "This key already has": "concurrent per key",
    "tokens per minute": "tokens per minute",
    "The server is at its limit": "in flight server-wide",
}


async def burst(url: str, keys: list[str]) -> list[tuple[int, float, str | None]]:
    body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}

    async def one(key: str):
        r = await stream(client, f"{url}/v1/chat/completions", body, headers={"Authorization": f"Bearer {key}"})
        if not r.ok:
            limit = next((why for text, why in REASONS.items() if text in r.error), "?")
            return r.status, r.seconds, limit
        return 200, r.seconds, None

    async with http_client(connections=200, timeout=60) as client:
        return await asyncio.gather(*(one(k) for k in keys))


def report(name: str, results, engine_requests: int) -> dict:
    codes = Counter(code for code, _, _ in results)
    refused = [s * 1000 for code, s, _ in results if code == 429]
    served = [s * 1000 for code, s, _ in results if code == 200]
    row = {
        "burst": name,
        "served": codes[200],
        "refused": codes[429],
        "engine_requests": engine_requests,
        "refused_p50_ms": nan_if_empty(statistics.median, refused),
        "refused_max_ms": nan_if_empty(max, refused),
        "served_p50_ms": nan_if_empty(statistics.median, served),
        "refused_by": dict(Counter(limit for code, _, limit in results if code == 429)),
    }
    print(
        f"{name:<44} {codes[200]:>6} {codes[429]:>6} {engine_requests:>7} {row['refused_p50_ms']:>9.1f} "
        f"{row['refused_max_ms']:>9.1f} {row['served_p50_ms']:>9.0f}  {row['refused_by']}"
    )
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_json_argument(p)
    args = p.parse_args()
    with output(args) as figures:
        app, engines = app_on_scripted_engines(LIMITS)
        with serving_in_thread(app) as url:
            print(
                "\nscripted engine: 20 tokens at 30 ms each; limits: 8 concurrent per key, 600 tokens/min per key "
                "(a request reserves its 2 prompt tokens + 20), 32 in flight server-wide"
            )
            print(
                f"{'burst':<44} {'served':>6} {'429':>6} {'engine':>7} {'429 p50':>9} {'429 max':>9} "
                f"{'200 p50':>9}  refused by"
            )
            figures.update(limits=LIMITS, bursts=[])
            engine = engines[0]
            for name, keys in [
                ("64 at once from one key", ["key0"] * 64),
                ("4 keys × 16 at once", [f"key{i % 4}" for i in range(64)]),
            ]:
                before = len(engine.requests)
                figures["bursts"].append(report(name, asyncio.run(burst(url, keys)), len(engine.requests) - before))
            # A fresh key in waves of 8 (its concurrency) until its minute runs out.
            before, results = len(engine.requests), []
            while not any(code == 429 for code, _, _ in results[-8:]):
                results += asyncio.run(burst(url, ["fresh"] * 8))
            figures["bursts"].append(
                report(
                    f"waves of 8 from a fresh key, {len(results) // 8} waves", results, len(engine.requests) - before
                )
            )


if __name__ == "__main__":
    main()
