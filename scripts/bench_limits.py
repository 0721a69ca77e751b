"""How the admission limits behave under a burst, in figures (no model needed: scripted engines).

Serves the real app on scripted engines (30 ms per token, 20 tokens) under uvicorn on loopback with
`--max-concurrent-per-key 8`, `--tokens-per-minute-per-key 600` and `--max-queued-requests 32`,
then fires bursts of concurrent streamed chats: one key sending 64, four keys sending 16 each, and a
fresh key sending waves of 8 until its minute's tokens run out. Prints, per burst, how many were served and
refused (by which limit), how fast a 429 came back, and how many requests reached the engine.

    .venv/bin/python scripts/bench_limits.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def serve(settings_kwargs: dict) -> tuple[str, object, object]:
    import httpx
    import uvicorn

    from server.app import create_app
    from server.fake_engine import ScriptedEngine
    from server.launcher import free_port
    from server.pool import EnginePool
    from server.registry import Registry
    from server.settings import Settings

    engines = []

    def factory(spec):
        engines.append(ScriptedEngine(" ".join(f"w{i}" for i in range(20)), delay=0.03, max_model_len=512))
        return engines[-1]

    registry = Registry.model_validate({"stages": {"base": {"model": "fake/base"}}})
    keys = frozenset({*(f"key{i}" for i in range(4)), "fresh"})
    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp()), api_keys=keys, **settings_kwargs),
                     EnginePool(registry, factory), with_ui=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(url + "/ready").status_code == 200:
                return url, server, engines
        except httpx.HTTPError:
            time.sleep(0.05)


async def burst(url: str, keys: list[str]) -> list[tuple[int, float, str | None]]:
    import httpx

    async def one(key: str):
        body = {"model": "base", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": True}
        began = time.perf_counter()
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status_code != 200:
                detail = (await r.aread()).decode()
                reasons = {"This key already has": "concurrent per key", "tokens per minute": "tokens per minute",
                           "The server is at its limit": "in flight server-wide"}
                limit = next((why for text, why in reasons.items() if text in detail), "?")
                return r.status_code, time.perf_counter() - began, limit
            async for _ in r.aiter_lines():
                pass
            return 200, time.perf_counter() - began, None

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=200)) as client:
        return await asyncio.gather(*(one(k) for k in keys))


def report(name: str, results, engine_requests: int) -> None:
    codes = Counter(code for code, _, _ in results)
    refused = [s * 1000 for code, s, _ in results if code == 429]
    served = [s * 1000 for code, s, _ in results if code == 200]
    why = Counter(limit for code, _, limit in results if code == 429)
    print(f"{name:<44} {codes[200]:>6} {codes[429]:>6} {engine_requests:>7} "
          f"{statistics.median(refused) if refused else float('nan'):>9.1f} "
          f"{max(refused) if refused else float('nan'):>9.1f} "
          f"{statistics.median(served) if served else float('nan'):>9.0f}  {dict(why)}")


def main() -> None:
    url, server, engines = serve({"max_concurrent_per_key": 8, "tokens_per_minute_per_key": 600,
                                  "max_queued_requests": 32})
    print("\nscripted engine: 20 tokens at 30 ms each; limits: 8 concurrent per key, 600 tokens/min per key "
          "(a request reserves its 2 prompt tokens + 20), 32 in flight server-wide")
    print(f"{'burst':<44} {'served':>6} {'429':>6} {'engine':>7} {'429 p50':>9} {'429 max':>9} {'200 p50':>9}"
          "  refused by")
    engine = engines[0]
    for name, keys in [("64 at once from one key", ["key0"] * 64),
                       ("4 keys × 16 at once", [f"key{i % 4}" for i in range(64)])]:
        before = len(engine.requests)
        report(name, asyncio.run(burst(url, keys)), len(engine.requests) - before)
    # A fresh key in waves of 8 (its concurrency) until its minute runs out.
    before, results = len(engine.requests), []
    while not any(code == 429 for code, _, _ in results[-8:]):
        results += asyncio.run(burst(url, ["fresh"] * 8))
    report(f"waves of 8 from a fresh key, {len(results) // 8} waves", results, len(engine.requests) - before)
    server.should_exit = True


if __name__ == "__main__":
    main()
