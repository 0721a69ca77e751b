"""Does the server stay responsive under a huge request and many streams? `/health` latency, measured.

Starts `stagechat serve` on a tiny random checkpoint with the body limit raised to 32 MiB (so a 16 MB
chat message is really parsed, templated and tokenised, not refused at the door), then, while a
separate process polls `GET /health` every 20 ms:
  1. idle (baseline);
  2. 128 streams of 128 tokens;
  3. the same 128 streams plus one chat request whose message is 16 MB;
  4. a 40 MB request (over the limit): how fast the 413 comes back.
Prints /health p50/p99/max per phase, what the big requests got and how long they took.

    .venv/bin/python scripts/bench_health.py [--streams 128] [--mb 16]

Run it alone on the machine (it starts a vLLM engine): `flock /tmp/stagechat-heavy.lock ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.launcher import stagechat_server  # noqa: E402  (after the path is set)

LIMIT = 32 * 1024 * 1024


def poll_health(url: str, stop, out) -> None:
    """In its own process: GET /health every 20 ms on one connection; send back the latencies."""
    import httpx

    latencies = []
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            began = time.perf_counter()
            client.get(url + "/health").raise_for_status()
            latencies.append((time.time(), (time.perf_counter() - began) * 1000))
            time.sleep(0.02)
    out.put(latencies)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def streams(session, url: str, count: int, tokens: int) -> int:
    """`count` concurrent completions streams; returns how many failed."""

    async def one():
        body = {"model": "bench", "prompt": "The capital of Kenya is", "max_tokens": tokens, "temperature": 0,
                "ignore_eos": True, "stream": True}
        async with session.post(f"{url}/v1/completions", json=body) as r:
            if r.status != 200:
                return 1
            async for _ in r.content:
                pass
        return 0

    return sum(await asyncio.gather(*(one() for _ in range(count))))


async def big_request(session, url: str, megabytes: float) -> tuple[int, float, str]:
    text = "Hello there how are you " * int(megabytes * 1e6 / 24)
    body = {"model": "bench", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    began = time.perf_counter()
    async with session.post(f"{url}/v1/chat/completions", json=body) as r:
        answer = await r.text()
        return r.status, time.perf_counter() - began, answer[:160]


async def run_phases(url: str, n_streams: int, megabytes: float) -> list[tuple[str, float, float, str]]:
    import aiohttp

    phases = []
    connector = aiohttp.TCPConnector(limit=n_streams + 8)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=900)) as session:
        await streams(session, url, 2, 4)  # warm
        began = time.time()
        await asyncio.sleep(2)
        phases.append(("idle", began, time.time(), ""))

        began = time.time()
        failed = await streams(session, url, n_streams, 128)
        phases.append((f"{n_streams} streams", began, time.time(), f"{failed} failed"))

        began = time.time()
        load = asyncio.create_task(streams(session, url, n_streams, 128))
        status, seconds, answer = await big_request(session, url, megabytes)
        failed = await load
        phases.append((f"{n_streams} streams + {megabytes:g} MB chat", began, time.time(),
                       f"big request: {status} in {seconds:.1f} s ({answer!r}); streams: {failed} failed"))

        began = time.time()
        status, seconds, answer = await big_request(session, url, 40)
        phases.append(("40 MB request (over the limit)", began, time.time(),
                       f"{status} in {seconds * 1000:.0f} ms ({answer[:80]!r})"))
    return phases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=128)
    p.add_argument("--mb", type=float, default=16)
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from models.tiny import make_tiny_checkpoint

        model = make_tiny_checkpoint(work / "tiny", layers=2, hidden=128, heads=2)
        config = work / "stages.yaml"
        config.write_text(f"engine: {{max_model_len: 512}}\nstages:\n  bench: {{model: {model}}}\n")
        server = stagechat_server(config, work / "stagechat", ("--no-ui", "--max-body-bytes", str(LIMIT)),
                                  env={"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]})
        ctx = mp.get_context("spawn")
        stop, out = ctx.Event(), ctx.Queue()
        poller = ctx.Process(target=poll_health, args=(server.url, stop, out))
        poller.start()
        try:
            phases = asyncio.run(run_phases(server.url, args.streams, args.mb))
        finally:
            stop.set()
            latencies = out.get(timeout=300)
            poller.join()
            server.stop()

    print(f"\n/health polled every 20 ms from another process; server body limit {LIMIT} bytes")
    print(f"{'phase':<36} {'polls':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  outcome")
    for name, began, ended, outcome in phases:
        window = [ms for stamp, ms in latencies if began <= stamp <= ended]
        if not window:
            print(f"{name:<36} {0:>6}  (no poll finished inside the phase)  {outcome}")
            continue
        print(f"{name:<36} {len(window):>6} {statistics.median(window):>8.1f} {percentile(window, 0.99):>8.1f} "
              f"{max(window):>8.1f}  {outcome}")


if __name__ == "__main__":
    main()
