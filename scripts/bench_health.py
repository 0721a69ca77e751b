"""Does the server stay responsive under a huge request and many streams? `/health` latency, measured.

Starts `stagechat serve` on a tiny random checkpoint with the body limit raised to 32 MiB (so a 16 MB
chat message is really parsed, templated and tokenised, not refused at the door), then, while a
separate process polls `GET /health` every 20 ms:
  1. idle (baseline);
  2. 128 streams of 128 tokens;
  3. the same 128 streams plus one chat request whose message is 16 MB;
  4. a 40 MB request (over the limit): how fast the 413 comes back.
Prints /health p50/p99/max per phase, what the big requests got and how long they took.

    .venv/bin/python scripts/bench_health.py [--streams 128] [--mb 16] [--json [FILE]]

Run it alone on the machine (it starts a vLLM engine): `flock /tmp/stagechat-heavy.lock ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_common import (
    add_json_argument,
    engine_env_defaults,
    http_client,
    one_stage_registry,
    output,
    percentile,
    running,
    stream,
    timed_post,
)

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


async def streams(client, url: str, count: int, tokens: int) -> int:
    """`count` concurrent completions streams; returns how many failed."""
    body = {
        "model": "bench",
        "prompt": "The capital of Kenya is",
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    results = await asyncio.gather(*(stream(client, f"{url}/v1/completions", body) for _ in range(count)))
    return sum(not r.ok for r in results)


async def big_request(client, url: str, megabytes: float) -> tuple[int, float, str]:
    text = "Hello there how are you " * int(megabytes * 1e6 / 24)
    body = {"model": "bench", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    r, seconds = await timed_post(client, f"{url}/v1/chat/completions", body)
    return r.status_code, seconds, r.text[:160]


async def run_phases(url: str, n_streams: int, megabytes: float) -> list[tuple[str, float, float, str]]:
    phases = []
    async with http_client(connections=n_streams + 8, timeout=900) as client:
        await streams(client, url, 2, 4)  # warm
        began = time.time()
        await asyncio.sleep(2)
        phases.append(("idle", began, time.time(), ""))

        began = time.time()
        failed = await streams(client, url, n_streams, 128)
        phases.append((f"{n_streams} streams", began, time.time(), f"{failed} failed"))

        began = time.time()
        load = asyncio.create_task(streams(client, url, n_streams, 128))
        status, seconds, answer = await big_request(client, url, megabytes)
        failed = await load
        phases.append(
            (
                f"{n_streams} streams + {megabytes:g} MB chat",
                began,
                time.time(),
                f"big request: {status} in {seconds:.1f} s ({answer!r}); streams: {failed} failed",
            )
        )

        began = time.time()
        status, seconds, answer = await big_request(client, url, 40)
        phases.append(
            (
                "40 MB request (over the limit)",
                began,
                time.time(),
                f"{status} in {seconds * 1000:.0f} ms ({answer[:80]!r})",
            )
        )
    return phases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=128)
    p.add_argument("--mb", type=float, default=16)
    add_json_argument(p)
    args = p.parse_args()
    engine_env_defaults("2")
    from models.tiny import make_tiny_checkpoint
    from server.launcher import stagechat_server

    with output(args) as figures:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            model = make_tiny_checkpoint(work / "tiny", layers=2, hidden=128, heads=2)
            config = one_stage_registry(work / "stages.yaml", model, max_model_len=512)
            with running(
                stagechat_server(
                    config,
                    work / "stagechat",
                    ("--no-ui", "--max-body-bytes", str(LIMIT)),
                    env={"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]},
                )
            ) as server:
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

        figures.update(body_limit_bytes=LIMIT, phases=[])
        print(f"\n/health polled every 20 ms from another process; server body limit {LIMIT} bytes")
        print(f"{'phase':<36} {'polls':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  outcome")
        for name, began, ended, outcome in phases:
            window = [ms for stamp, ms in latencies if began <= stamp <= ended]
            row = {"phase": name, "polls": len(window), "outcome": outcome}
            figures["phases"].append(row)
            if not window:
                print(f"{name:<36} {0:>6}  (no poll finished inside the phase)  {outcome}")
                continue
            row.update(p50_ms=statistics.median(window), p99_ms=percentile(window, 0.99), max_ms=max(window))
            print(
                f"{name:<36} {len(window):>6} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['max_ms']:>8.1f}  "
                f"{outcome}"
            )


if __name__ == "__main__":
    main()
