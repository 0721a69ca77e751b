"""What does serving a stage from a remote vLLM server cost, against the same checkpoint in process?

One checkpoint, one run, three paths: stagechat with the stage in process (`VllmEngine`); stagechat
with the stage on vLLM's own OpenAI server (`RemoteEngine`, the server on loopback standing in for a
GPU node); and that vLLM server called directly (what the remote hop adds on top of it). Load: 1 and
8 concurrent streams of a fixed prompt and a fixed number of tokens (ignore_eos), driven by the same
streaming client as scripts/bench_overhead.py (`bench_common.bench_http`). Each engine runs alone (the
other is stopped) and on the same cores. Prints tokens/s, TTFT p50/p99 and the ratios remote / in process.

    .venv/bin/python scripts/bench_remote.py [--model DIR] [--tokens 128] [--concurrency 1 8] [--json [FILE]]

Without --model it makes the tiny random checkpoint the tests use (models/tiny.py).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from bench_common import add_json_argument, bench_http, engine_env_defaults, one_stage_registry, output, running


def run_local(model: Path, work: Path, tokens: int, levels: list[int]) -> dict:
    from server.launcher import stagechat_server

    config = one_stage_registry(work / "local.yaml", model, max_model_len=512, dtype="float32")
    with running(stagechat_server(config, work / "local", ("--no-ui",))) as server:
        return asyncio.run(bench_http(server.url, "bench", tokens, levels))


def run_remote(model: Path, work: Path, tokens: int, levels: list[int]) -> tuple[dict, dict]:
    from server.launcher import stagechat_server, vllm_openai_server

    # The remote engine keeps to the core the in-process engine uses (stagechat's default, core 1).
    with running(
        vllm_openai_server(model, work / "vllm.log", served_model_name="bench", env={"VLLM_CPU_OMP_THREADS_BIND": "1"})
    ) as remote:
        config = work / "remote.yaml"
        config.write_text(
            f"stages:\n  bench:\n    remote: {{url: '{remote.url}/v1', model: bench, tokenizer: '{model}'}}\n"
        )
        with running(stagechat_server(config, work / "remote", ("--no-ui",))) as server:
            through = asyncio.run(bench_http(server.url, "bench", tokens, levels))
        direct = asyncio.run(bench_http(remote.url, "bench", tokens, levels))
        return through, direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    add_json_argument(parser)
    args = parser.parse_args()
    engine_env_defaults("1")
    with output(args) as results:
        with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
            work = Path(tmp)
            model = args.model
            if model is None:
                from models.tiny import make_tiny_checkpoint

                model = make_tiny_checkpoint(work / "tiny")
            local = run_local(model, work, args.tokens, args.concurrency)
            remote, direct = run_remote(model, work, args.tokens, args.concurrency)
        results.update(local=local, remote=remote, vllm_direct=direct)
        print(f"{'path':<28}{'streams':>8}{'tok/s':>10}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}")
        for name, rows in [
            ("stagechat, in process", local),
            ("stagechat → remote vLLM", remote),
            ("vLLM server directly", direct),
        ]:
            for c in args.concurrency:
                r = rows[c]
                print(f"{name:<28}{c:>8}{r['tok_s']:>10.0f}{r['ttft_p50']:>13.1f}{r['ttft_p99']:>13.1f}")
        print("\nremote / in process:")
        for c in args.concurrency:
            print(
                f"  {c} streams: tok/s ×{remote[c]['tok_s'] / local[c]['tok_s']:.2f}, "
                f"TTFT p50 ×{remote[c]['ttft_p50'] / local[c]['ttft_p50']:.2f} "
                f"({remote[c]['ttft_p50'] - local[c]['ttft_p50']:+.1f} ms)"
            )


if __name__ == "__main__":
    main()
