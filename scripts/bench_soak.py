"""A long day: N minutes of mixed traffic on one server, with an engine killed, a round trained and the
database restarted along the way. Does it leak, slow down, or lose what it acknowledged?

Starts `stagechat serve` (no UI) on `--config` (default: a random tiny family it makes with
models/tiny.py: a base checkpoint and a LoRA `sft` on it) and drives, all to 127.0.0.1:
- SSE chat streams on every stage (`--streams` at once), each answer then rated up or down;
- every 5th request a non-streamed n=2 chat whose two answers are ranked;
- WebSocket sessions (chat, then a rating frame on the same socket);
- client drops: streams closed after their first chunk;
and, once each: `kill -9` of the vLLM engine worker (at 25% of the time), one training round
(`stagechat rlhf-round --method kto` from `sft`, reloading the server; at 40%), and, only with
`--restart-database PGDATA` and a PostgreSQL `--database-url`, `pg_ctl restart -m fast` (at 60%).

Reports the server's RSS over time (and its engines'), TTFT p50/p99 per window (`--window-minutes`,
default 5), errors by kind, the time from the engine kill to serving again, the round's outcome, and
the write ledger: every rating and ranking the server acknowledged against what the store holds.

    .venv/bin/python scripts/bench_soak.py [--minutes 30] [--config stages.yaml] [--json [FILE]]

Run it alone on the machine (it starts a vLLM engine): `flock /tmp/stagechat-heavy.lock ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import add_json_argument, engine_env_defaults, output, percentile, running

MESSAGES = [
    [{"role": "user", "content": text}]
    for text in (
        "Capital of Kenya?",
        "Tell me a short story about a fox.",
        "What is 2 + 2?",
        "Name three colours.",
        "Write a haiku about rain.",
        "Why is the sky blue?",
    )
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30, help="how long the traffic runs")
    p.add_argument("--config", default=None, help="the registry to serve (default: a random tiny family)")
    p.add_argument("--database-url", default=None, help="the store (default: SQLite in the data dir)")
    p.add_argument(
        "--restart-database",
        default=None,
        metavar="PGDATA",
        help="restart this PostgreSQL data dir once (pg_ctl restart -m fast); only with a "
        "postgresql --database-url the script may restart",
    )
    p.add_argument("--streams", type=int, default=4, help="SSE streams kept in flight")
    p.add_argument("--websockets", type=int, default=1, help="WebSocket sessions kept open")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--window-minutes", type=float, default=5, help="the TTFT window")
    p.add_argument("--sample-seconds", type=float, default=10, help="how often RSS is read")
    p.add_argument("--no-kill", action="store_true", help="do not kill the engine")
    p.add_argument("--no-round", action="store_true", help="do not train a round")
    p.add_argument("--round-steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-timeout", type=float, default=900, help="seconds the server may take to be ready")
    add_json_argument(p)
    args = p.parse_args(argv)
    if args.restart_database and not (args.database_url or "").startswith("postgresql"):
        p.error("--restart-database needs a postgresql --database-url (the server the script may restart)")
    if args.minutes <= 0 or args.streams < 1:
        p.error("--minutes must be > 0 and --streams >= 1")
    return args


# -- what the traffic records ----------------------------------------------------------------------


@dataclass
class Soak:
    """Everything the traffic saw, stamped in seconds since the start."""

    began: float = field(default_factory=time.monotonic)
    ttfts: list[tuple[float, float]] = field(default_factory=list)  # (t, seconds to the first text)
    ok: Counter = field(default_factory=Counter)  # requests that succeeded, by kind
    errors: Counter = field(default_factory=Counter)  # by kind of failure
    acked: dict[str, set[str]] = field(default_factory=lambda: {"feedback": set(), "ranking": set()})
    rss: list[tuple[float, float, float]] = field(default_factory=list)  # (t, server MiB, engines MiB)
    events: list[dict[str, Any]] = field(default_factory=list)  # the kill, the round, the restart
    served_at: list[float] = field(default_factory=list)  # when a stream that ended well began

    def now(self) -> float:
        return time.monotonic() - self.began


def error_kind(status: int | None, body: str = "", exc: BaseException | None = None) -> str:
    """A failure's kind, for counting: "503 engine_unavailable", "in-band error", "reset", "timeout"..."""
    if exc is not None:
        name = type(exc).__name__
        if "Timeout" in name:
            return "timeout"
        if any(w in name for w in ("RemoteProtocol", "ReadError", "ConnectError", "ConnectionClosed", "WriteError")):
            return f"reset ({name})"
        return f"client error ({name})"
    try:
        code = json.loads(body)["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        code = None
    if status == 200:
        return f"in-band error ({code})" if code else "in-band error"
    return f"{status} {code}" if code else f"{status} (no JSON error body)"


def ttft_windows(ttfts: list[tuple[float, float]], window_s: float) -> list[dict[str, Any]]:
    """TTFT p50/p99 (ms) and the count per window of `window_s` seconds, in order."""
    by_window: dict[int, list[float]] = {}
    for t, seconds in ttfts:
        by_window.setdefault(int(t // window_s), []).append(seconds * 1000)
    return [
        {
            "from_s": i * window_s,
            "to_s": (i + 1) * window_s,
            "n": len(ms),
            "p50_ms": statistics.median(ms),
            "p99_ms": percentile(ms, 0.99),
        }
        for i, ms in sorted(by_window.items())
    ]


def rss_summary(samples: list[tuple[float, float, float]]) -> dict[str, float]:
    """The server's RSS at the start (the first sample), at the end, its peak and growth (MiB)."""
    if not samples:
        return {}
    first, last = samples[0], samples[-1]
    return {
        "server_start_mib": first[1],
        "server_end_mib": last[1],
        "server_max_mib": max(s[1] for s in samples),
        "server_growth_mib": last[1] - first[1],
        "engines_start_mib": first[2],
        "engines_end_mib": last[2],
    }


def write_ledger(acked: dict[str, set[str]], stored: dict[str, set[str]]) -> dict[str, dict[str, int]]:
    """Per kind: acknowledged, stored, acknowledged but not stored (lost), stored but never acknowledged
    (a write whose answer the client did not get: a timeout or a reset)."""
    return {
        kind: {
            "acknowledged": len(acked[kind]),
            "stored": len(stored.get(kind, set())),
            "lost": len(acked[kind] - stored.get(kind, set())),
            "unacknowledged_stored": len(stored.get(kind, set()) - acked[kind]),
        }
        for kind in acked
    }


def recovery_seconds(killed_at: float, served_at: list[float]) -> float | None:
    """Seconds from the kill to the first stream begun after it that ended well (None: never served
    again). Begun, not ended: a stream generated before the kill can end just after it."""
    after = [t for t in served_at if t > killed_at]
    return min(after) - killed_at if after else None


# -- the traffic -------------------------------------------------------------------------------------


async def sse_chat(client, soak: Soak, stage: str, max_tokens: int, *, drop: bool = False) -> str | None:
    """One streamed chat; records TTFT, or the kind of its failure. Returns the response id when it ended
    well. `drop`: close the connection after the first chunk, as a client that went away."""
    import httpx

    body = {"model": stage, "messages": random.choice(MESSAGES), "max_tokens": max_tokens, "stream": True}
    began, t0 = time.perf_counter(), soak.now()
    response_id, first, failed = None, None, None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                soak.errors[error_kind(r.status_code, (await r.aread()).decode(errors="replace"))] += 1
                return None
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    failed = json.dumps(event)
                    continue
                response_id = response_id or event.get("id")
                choice = (event.get("choices") or [{}])[0]
                if first is None and (choice.get("delta") or {}).get("content"):
                    first = time.perf_counter() - began
                    if drop:
                        soak.ok["dropped by the client"] += 1
                        return None  # leaving the block closes the connection mid-stream
                if choice.get("finish_reason") == "error":
                    failed = failed or json.dumps({"error": {"code": "finish_reason_error"}})
    except (httpx.HTTPError, OSError) as exc:
        soak.errors[error_kind(None, exc=exc)] += 1
        return None
    if failed:
        soak.errors[error_kind(200, failed)] += 1
        return None
    if first is not None:
        soak.ttfts.append((t0, first))
    soak.ok["stream"] += 1
    soak.served_at.append(t0)
    return response_id


async def post_json(client, soak: Soak, path: str, body: dict, kind: str) -> dict | None:
    import httpx

    try:
        r = await client.post(path, json=body)
    except (httpx.HTTPError, OSError) as exc:
        soak.errors[f"{kind}: {error_kind(None, exc=exc)}"] += 1
        return None
    if r.status_code != 200:
        soak.errors[f"{kind}: {error_kind(r.status_code, r.text)}"] += 1
        return None
    soak.ok[kind] += 1
    return r.json()


async def streams_worker(client, soak: Soak, stages: list[str], args, stop: asyncio.Event) -> None:
    """Streams back to back; each answer rated; every 5th request a ranked pair; every 7th a drop."""
    i = 0
    while not stop.is_set():
        i += 1
        stage = random.choice(stages)
        if i % 5 == 0:  # two answers to one prompt, ranked
            answer = await post_json(
                client,
                soak,
                "/v1/chat/completions",
                {"model": stage, "messages": random.choice(MESSAGES), "n": 2, "max_tokens": args.max_tokens // 2},
                "chat (n=2)",
            )
            if answer:
                ids = [answer["id"], f"{answer['id']}:1"]
                ranked = await post_json(
                    client, soak, "/v1/rankings", {"response_ids": ids, "ranking": [[ids[1]], [ids[0]]]}, "ranking"
                )
                if ranked:
                    soak.acked["ranking"].add(ranked["id"])
            continue
        drop = i % 7 == 0
        failures = sum(soak.errors.values())
        response_id = await sse_chat(client, soak, stage, args.max_tokens, drop=drop)
        if response_id:
            rated = await post_json(
                client,
                soak,
                "/v1/feedback",
                {"response_id": response_id, "rating": random.choice(["up", "down"])},
                "rating",
            )
            if rated:
                soak.acked["feedback"].add(rated["id"])
        if sum(soak.errors.values()) > failures:  # refused (an engine restarting): back off, do not spin
            await asyncio.sleep(0.5)


async def websocket_worker(url: str, soak: Soak, stages: list[str], args, stop: asyncio.Event) -> None:
    """A session: chats on one socket, each rated with a feedback frame; a new socket when one breaks."""
    import websockets

    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    n = 0
    while not stop.is_set():
        try:
            async with websockets.connect(ws_url, open_timeout=30, max_size=None) as ws:
                soak.ok["websocket session"] += 1
                while not stop.is_set():
                    n += 1
                    await ws.send(
                        json.dumps(
                            {
                                "type": "chat",
                                "id": f"c{n}",
                                "model": random.choice(stages),
                                "messages": random.choice(MESSAGES),
                                "max_tokens": args.max_tokens,
                            }
                        )
                    )
                    began, first, done = time.perf_counter(), None, None
                    t0 = soak.now()
                    while done is None:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
                        if frame.get("id") != f"c{n}":
                            continue
                        if frame["type"] == "delta" and first is None and frame.get("text"):
                            first = time.perf_counter() - began
                        elif frame["type"] in ("done", "error"):
                            done = frame
                    if done["type"] == "error":
                        soak.errors[f"websocket: {error_kind(200, json.dumps(done))}"] += 1
                        await asyncio.sleep(0.2)
                        continue
                    soak.ok["websocket chat"] += 1
                    if first is not None:
                        soak.ttfts.append((t0, first))
                    await ws.send(
                        json.dumps(
                            {
                                "type": "feedback",
                                "id": f"f{n}",
                                "response_id": done["response_id"],
                                "rating": random.choice(["up", "down"]),
                            }
                        )
                    )
                    ack = None
                    while ack is None:
                        frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
                        if frame.get("id") == f"f{n}":
                            ack = frame
                    if ack["type"] == "ack":
                        soak.ok["websocket rating"] += 1
                        soak.acked["feedback"].add(ack["feedback"]["id"])
                    else:
                        soak.errors[f"websocket rating: {error_kind(200, json.dumps(ack))}"] += 1
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
            soak.errors[f"websocket: {error_kind(None, exc=exc)}"] += 1
            await asyncio.sleep(0.5)


async def sample_rss(server_pid: int, soak: Soak, every: float, stop: asyncio.Event) -> None:
    import psutil

    server = psutil.Process(server_pid)
    while True:
        engines = 0.0
        for child in server.children(recursive=True):
            try:
                engines += child.memory_info().rss
            except psutil.Error:
                pass
        soak.rss.append((soak.now(), server.memory_info().rss / 2**20, engines / 2**20))
        if stop.is_set():
            return
        try:
            await asyncio.wait_for(stop.wait(), every)
        except asyncio.TimeoutError:
            pass


async def kill_engine(server_pid: int, soak: Soak) -> None:
    from server.launcher import engine_worker

    worker = await asyncio.to_thread(engine_worker, server_pid)
    if worker is None:
        soak.events.append({"event": "engine kill", "at_s": soak.now(), "error": "no engine worker found"})
        return
    worker.kill()  # SIGKILL, as the OOM killer would
    soak.events.append({"event": "engine kill", "at_s": soak.now(), "pid": worker.pid})
    print(f"[{soak.now():6.0f} s] killed the engine worker (pid {worker.pid})", file=sys.stderr)


async def train_round(
    args, config: Path, data_dir: Path, url: str, database_url: str, soak: Soak, stages: list[str]
) -> None:
    """One KTO round from `sft` on the ratings so far, reloading the server; its stage joins the traffic."""
    began = soak.now()
    command = [
        sys.executable,
        "-m",
        "cli",
        "rlhf-round",
        "--method",
        "kto",
        "--config",
        str(config),
        "--from-stage",
        "sft",
        "--name",
        "soak-round",
        "--steps",
        str(args.round_steps),
        "--min-ratings",
        "4",
        "--server",
        url,
        "--database-url",
        database_url,
    ]
    env = {**os.environ, "STAGECHAT_DATA_DIR": str(data_dir)}
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=1800)
    event = {
        "event": "training round",
        "at_s": began,
        "seconds": soak.now() - began,
        "exit_code": done.returncode,
        "said": (done.stdout.strip() or done.stderr.strip()).splitlines()[-1:] or [""],
    }
    soak.events.append(event)
    print(
        f"[{soak.now():6.0f} s] round: exit {done.returncode} in {event['seconds']:.0f} s: {event['said'][0]}",
        file=sys.stderr,
    )
    if done.returncode == 0:
        stages.append("soak-round")


async def restart_database(pgdata: str, soak: Soak) -> None:
    began = soak.now()
    done = await asyncio.to_thread(
        subprocess.run,
        ["pg_ctl", "-D", pgdata, "restart", "-m", "fast", "-w"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    soak.events.append(
        {"event": "database restart", "at_s": began, "seconds": soak.now() - began, "exit_code": done.returncode}
    )


async def stored_ids(url: str) -> dict[str, set[str]]:
    """Every rating and ranking the store lists (paged), by kind."""
    import httpx

    out: dict[str, set[str]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for kind, path in (("feedback", "/v1/feedback"), ("ranking", "/v1/rankings")):
            ids: set[str] = set()
            after = None
            while True:
                page = (await client.get(path, params={"limit": 1000, **({"after": after} if after else {})})).json()
                ids.update(item["id"] for item in page["data"])
                if not page["has_more"]:
                    break
                after = page["last_id"]
            out[kind] = ids
    return out


async def soak_traffic(args, server, config: Path, data_dir: Path, database_url: str, stages: list[str]) -> Soak:
    import httpx

    soak = Soak()
    stop, sampler_stop = asyncio.Event(), asyncio.Event()
    total = args.minutes * 60
    sampler = asyncio.create_task(sample_rss(server.process.pid, soak, args.sample_seconds, sampler_stop))
    limits = httpx.Limits(max_connections=args.streams + 4, keepalive_expiry=4)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        workers = [asyncio.create_task(streams_worker(client, soak, stages, args, stop)) for _ in range(args.streams)]
        workers += [
            asyncio.create_task(websocket_worker(server.url, soak, stages, args, stop)) for _ in range(args.websockets)
        ]
        plan = []  # (at seconds, what)
        if not args.no_kill:
            plan.append((0.25 * total, lambda: kill_engine(server.process.pid, soak)))
        if not args.no_round:
            plan.append(
                (0.40 * total, lambda: train_round(args, config, data_dir, server.url, database_url, soak, stages))
            )
        if args.restart_database:
            plan.append((0.60 * total, lambda: restart_database(args.restart_database, soak)))
        side = []
        for at, what in sorted(plan, key=lambda x: x[0]):
            await asyncio.sleep(max(0.0, at - soak.now()))
            side.append(asyncio.create_task(what()))
        await asyncio.sleep(max(0.0, total - soak.now()))
        for task in side:  # a round still training finishes (bounded by its own timeout)
            await task
        stop.set()
        await asyncio.wait(workers, timeout=180)
        for task in workers:
            task.cancel()
    sampler_stop.set()
    await sampler
    return soak


def report(soak: Soak, stored: dict[str, set[str]], args, figures: dict) -> None:
    window_s = args.window_minutes * 60
    windows = ttft_windows(soak.ttfts, window_s)
    rss = rss_summary(soak.rss)
    ledger = write_ledger(soak.acked, stored)
    kill = next((e for e in soak.events if e["event"] == "engine kill" and "pid" in e), None)
    recovery = recovery_seconds(kill["at_s"], soak.served_at) if kill else None
    figures.update(
        minutes=args.minutes,
        ok=dict(soak.ok),
        errors=dict(soak.errors),
        ttft_windows=windows,
        rss=rss,
        rss_samples=[list(s) for s in soak.rss],
        ledger=ledger,
        events=soak.events,
        engine_recovery_s=recovery,
        ttft_p99_drift_ms=(windows[-1]["p99_ms"] - windows[0]["p99_ms"]) if len(windows) > 1 else None,
    )
    print(f"\n{args.minutes:g} minutes; succeeded: {dict(soak.ok)}")
    print(f"errors by kind: {dict(soak.errors) or 'none'}")
    print(f"\n{'window':<14} {'n':>6} {'TTFT p50 ms':>12} {'p99 ms':>9}")
    for w in windows:
        print(
            f"{w['from_s'] / 60:5.1f}-{w['to_s'] / 60:<5.1f} min {w['n']:>6} {w['p50_ms']:>12.1f} {w['p99_ms']:>9.1f}"
        )
    if rss:
        print(
            f"\nserver RSS: {rss['server_start_mib']:.0f} → {rss['server_end_mib']:.0f} MiB "
            f"(peak {rss['server_max_mib']:.0f}, growth {rss['server_growth_mib']:+.0f}); engines "
            f"{rss['engines_start_mib']:.0f} → {rss['engines_end_mib']:.0f} MiB; {len(soak.rss)} samples"
        )
    for e in soak.events:
        print(f"event: {e}")
    if kill:
        print("engine kill → serving again: " + (f"{recovery:.1f} s" if recovery is not None else "never"))
    for kind, row in ledger.items():
        print(
            f"ledger {kind}: {row['acknowledged']} acknowledged, {row['stored']} stored, {row['lost']} lost, "
            f"{row['unacknowledged_stored']} stored without an acknowledgement"
        )


def main() -> None:
    args = parse_args()
    random.seed(args.seed)
    engine_env_defaults("2")
    from server.launcher import stagechat_server

    with output(args) as figures, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        if args.config:
            config = Path(args.config).resolve()
        else:
            from models.tiny import make_tiny_adapter, make_tiny_checkpoint

            make_tiny_checkpoint(work / "base")
            make_tiny_adapter(work / "base", work / "lora")
            config = work / "stages.yaml"
            config.write_text(
                "engine: {max_model_len: 512, dtype: float32}\nstages:\n"
                "  base: {model: ./base, description: random tiny base}\n"
                "  sft: {adapter: ./lora, base: base, description: random LoRA on base}\n"
            )
        database_url = args.database_url or f"sqlite:///{data_dir / 'stagechat.db'}"
        env = {"STAGECHAT_DATABASE_URL": database_url, "VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]}
        server = stagechat_server(config, data_dir, ("--no-ui",), env=env, timeout=args.start_timeout)
        with running(server):
            import yaml

            stages = [name for name in yaml.safe_load(config.read_text())["stages"]]
            print(f"serving {', '.join(stages)} at {server.url} for {args.minutes:g} min", file=sys.stderr)
            soak = asyncio.run(soak_traffic(args, server, config, data_dir, database_url, stages))
            stored = asyncio.run(stored_ids(server.url))
        report(soak, stored, args, figures)


if __name__ == "__main__":
    main()
