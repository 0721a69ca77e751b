"""The harness every script in `scripts/` shares: one streaming client, the summaries, `--json`, servers.

- `stream()`: one streamed completion or chat completion over SSE (httpx, async): status, the time to
  the first chunk and to the first text, each chunk's time, usage and vLLM's speculative figures;
  `http_client()` is the client it runs on. `completion_stream`, `load_once` and `bench_http` are the
  fixed-prompt load the serving benchmarks drive; `direct_stream` is the same request without HTTP
  (vLLM's `AsyncLLM` in this process).
- `percentile`, `load_figures`, `median_of_runs`, `ratio`: the summaries.
- `add_json_argument` and `output()`: `--json` prints the figures as one JSON object on stdout (the
  text goes to stderr), `--json FILE` keeps the text and writes the object to FILE.
- `running`, `serving_in_thread`, `one_stage_registry`, `engine_env_defaults`: start and stop servers
  and engines alike.

It knows HTTP, SSE framing and the OpenAI chunk shape; it knows stagechat only through
`server.launcher` and `server.vllm_engine`. At import it loads only the standard library (httpx,
numpy, uvicorn, vLLM and stagechat where used), so a script's `--help` loads nothing heavy. Scripts
import it as a sibling module (`python scripts/NAME.py` puts `scripts/` first on the path), never by
editing `sys.path`; the installed package (`pip install -e .`) provides `server` and `models`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field, is_dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

PROMPT = "The capital of Kenya is"

# Both stagechat and vLLM's server (uvicorn) close a keep-alive connection after 5 s idle. A client
# that reuses one at that moment gets "Server disconnected" (one run of bench_overhead died of it):
# the client drops idle connections first.
KEEPALIVE_SECONDS = 4

# What marks a chunk in the compact JSON both stagechat and vLLM send.
_CHOICE = b'"choices":[{'
_EMPTY = (b'"text":""', b'"content":""')


@dataclass
class Streamed:
    """One streamed request, timed from just before it was sent (seconds)."""

    status: int
    seconds: float  # to the end of the body
    first_chunk: float | None = None  # the first chunk with a choice: the first token is out (its text may be
    # "" while a multi-byte character is incomplete, and a chat's first chunk may carry the role only)
    first_text: float | None = None  # the first chunk with a choice whose text is not empty
    chunk_times: list[float] = field(default_factory=list)  # every chunk with a choice
    usage: dict | None = None  # the last usage seen (`stream_options.include_usage`)
    speculative: dict | None = None  # vLLM's per-request speculative figures, from the final chunk
    error: str | None = None  # the body of a request not answered 200

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def tokens(self) -> int:
        """Completion tokens: from usage when the server sent it, else the chunks with a choice (one
        token each, unless speculative decoding put several in one)."""
        return self.usage["completion_tokens"] if self.usage else len(self.chunk_times)

    @property
    def gaps(self) -> list[float]:
        """The time between consecutive chunks (inter-token latency when a chunk is a token)."""
        return [b - a for a, b in pairwise(self.chunk_times)]

    def raise_for_status(self) -> Streamed:
        if not self.ok:
            raise RuntimeError(f"{self.status}: {self.error}")
        return self


def http_client(base_url: str = "", *, connections: int = 100, timeout: float = 600) -> httpx.AsyncClient:
    """The one HTTP client: `connections` kept open at once (every stream of a load gets one)."""
    import httpx

    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=KEEPALIVE_SECONDS
        ),
    )


async def stream(client: httpx.AsyncClient, path: str, body: dict, *, headers: dict | None = None) -> Streamed:
    """POST `body` with `stream: true` to `path` (a completions or chat completions endpoint) and read
    the SSE answer to its end. A refused request comes back with its status and body, not raised.

    Per chunk it does as little as it can (raw bytes split on newlines, substring tests, JSON only for
    the lines carrying usage or speculative figures), so that on a small machine it takes few cycles
    from the server it measures. httpx's own stack still costs about 28-30 µs of client CPU per
    chunk, where the aiohttp loop bench_overhead used before cost 11-14 µs (32 and 128 streams of 128
    chunks from a local SSE app, 2 cores)."""
    began = time.perf_counter()
    async with client.stream("POST", path, json={**body, "stream": True}, headers=headers) as r:
        if r.status_code != 200:
            error = (await r.aread()).decode(errors="replace")
            return Streamed(r.status_code, time.perf_counter() - began, error=error)
        out, rest = Streamed(200, 0.0), b""
        async for data in r.aiter_raw():
            now = time.perf_counter() - began  # every line of one read arrived together
            *lines, rest = (rest + data).split(b"\n")
            for line in lines:
                if not line.startswith(b"data: {"):
                    continue
                if _CHOICE in line:
                    out.chunk_times.append(now)
                    if out.first_text is None and not any(empty in line for empty in _EMPTY):
                        out.first_text = now
                if b'"usage":{' in line or b'"speculative"' in line:
                    event = json.loads(line[6:])
                    out.usage = event.get("usage") or out.usage
                    out.speculative = event.get("speculative") or out.speculative
    out.seconds = time.perf_counter() - began
    out.first_chunk = out.chunk_times[0] if out.chunk_times else None
    return out


async def timed_post(client: httpx.AsyncClient, path: str, body: dict) -> tuple[httpx.Response, float]:
    """A plain (not streamed) POST: the response, read whole, and the seconds it took."""
    began = time.perf_counter()
    r = await client.post(path, json=body)
    return r, time.perf_counter() - began


# The serving benchmarks' load: a fixed prompt, a fixed number of tokens (ignore_eos), many at once.


def completion_body(model: str, tokens: int, prompt: str = PROMPT) -> dict:
    return {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True}


async def completion_stream(client: httpx.AsyncClient, url: str, model: str, tokens: int) -> tuple[float, int]:
    """One fixed-prompt completions stream: (seconds to the first text, tokens)."""
    r = (await stream(client, f"{url}/v1/completions", completion_body(model, tokens))).raise_for_status()
    return r.first_text, r.tokens


async def direct_stream(llm, prompt_ids: list[int], tokens: int, request_id: str, lora=None) -> tuple[float, int]:
    """The same request to vLLM's `AsyncLLM` in this process (no HTTP): (seconds to the first token, tokens)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    began, ttft, n = time.perf_counter(), None, 0
    async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, request_id, lora_request=lora):
        if out.outputs and out.outputs[0].token_ids:
            ttft = ttft or time.perf_counter() - began
            n += len(out.outputs[0].token_ids)
    return ttft, n


async def concurrently(requests: Iterable[Awaitable[Any]]) -> tuple[list, float]:
    """The requests at once: their results and the wall time."""
    began = time.perf_counter()
    results = await asyncio.gather(*requests)
    return results, time.perf_counter() - began


async def load_once(one: Callable[[], Awaitable[tuple[float, int]]], concurrency: int) -> dict:
    """`concurrency` streams at once, each `one()` returning (TTFT s, tokens): `load_figures`."""
    results, seconds = await concurrently(one() for _ in range(concurrency))
    return load_figures([ttft for ttft, _ in results], sum(n for _, n in results), seconds)


async def bench_http(url: str, model: str, tokens: int, levels: list[int], repeats: int = 5) -> dict[int, dict]:
    """One server alone: `repeats` loads per concurrency level, the median of each figure."""
    async with http_client(connections=max(levels) + 4) as client:
        await completion_stream(client, url, model, 4)  # warm

        async def one():
            return await completion_stream(client, url, model, tokens)

        return {c: median_of_runs([await load_once(one, c) for _ in range(repeats)]) for c in levels}


# Summaries


def percentile(values: Iterable[float], q: float) -> float:
    """The observation nearest the `q` quantile (0..1): a value that was measured, never an
    interpolation (numpy's "nearest": index round(q × (n - 1)), ties to even)."""
    import numpy as np

    return float(np.quantile(np.fromiter(values, float), q, method="nearest"))


def load_figures(ttfts_s: list[float], tokens: int, seconds: float) -> dict[str, float]:
    """tok/s over the wall time, TTFT p50 and p99 in ms."""
    ms = [t * 1000 for t in ttfts_s]
    return {"tok_s": tokens / seconds, "ttft_p50": statistics.median(ms), "ttft_p99": percentile(ms, 0.99)}


def median_of_runs(runs: list[dict[str, float]]) -> dict[str, float]:
    """Figure by figure, the median over runs."""
    return {figure: statistics.median(run[figure] for run in runs) for figure in runs[0]}


def ratio(a: float, b: float) -> float:
    """a / b, with b kept off zero (a TTFT can round to nothing)."""
    return a / max(b, 1e-9)


def nan_if_empty(f: Callable[[list[float]], float], values: list[float]) -> float:
    return f(values) if values else float("nan")


# Output


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="print the figures as one JSON object on stdout (the text goes to stderr); "
        "with FILE, print the text as usual and write the object to FILE",
    )


def plain(value: Any) -> Any:
    """`value` as JSON can hold it: str keys, lists for tuples, None for NaN and infinities, str for paths."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # a numpy scalar
        return plain(value.item())
    return str(value)


@contextmanager
def output(args: argparse.Namespace) -> Iterator[dict]:
    """Around a script's run: yields the dict the script fills with its figures.

    `--json`: while it runs, stdout goes to stderr (Python's and, for child processes and vLLM's own
    logging, file descriptor 1), and the figures come out as one JSON line on stdout at the end.
    `--json FILE`: the text as usual, the figures written to FILE. Neither: the text only."""
    figures: dict = {}
    if args.json != "-":
        yield figures
        if args.json:
            Path(args.json).write_text(json.dumps(plain(figures), indent=2) + "\n")
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with redirect_stdout(sys.stderr):
            yield figures
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)
    print(json.dumps(plain(figures)), flush=True)


# Servers and engines


@contextmanager
def running(server):
    """A started `server.launcher.ChildServer` (or anything with `stop()`), stopped on the way out."""
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def serving_in_thread(app, ready_path: str = "/ready") -> Iterator[str]:
    """An ASGI app under uvicorn on a free loopback port, in a thread of this process: yields its URL
    once `ready_path` answers 200; the server exits on the way out."""
    import threading

    import httpx
    import uvicorn

    from server.launcher import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + ready_path).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if not thread.is_alive():
                raise RuntimeError(f"uvicorn on {url} exited before {ready_path} answered 200")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def one_stage_registry(path: Path, model: Path, **engine: Any) -> Path:
    """A registry serving `model` as the stage `bench`, with these engine settings."""
    settings = ", ".join(f"{k}: {v}" for k, v in engine.items())
    path.write_text(f"engine: {{{settings}}}\nstages:\n  bench: {{model: {model}}}\n")
    return path


def engine_env_defaults(kv_cache_gib: str = "2", *, bind_like_stagechat: bool = False) -> None:
    """vLLM's KV cache in GiB (else each engine reserves 92% of memory) and, with
    `bind_like_stagechat`, its threads on the cores stagechat gives engines by default, so that every
    path of a comparison runs on the same cores; what the caller's environment says wins."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", kv_cache_gib)
    if bind_like_stagechat:
        from server.vllm_engine import default_engine_cpus

        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", default_engine_cpus() or "auto")
