"""What does a reward engine cost the generation engine beside it, and what does scoring cost? One run.

Two `stagechat serve` runs on the same registry, one after the other: without the reward model,
then with it (a second vLLM engine, the pooling runner). In each: TTFT p50 of single chat streams,
and tokens/s of `--concurrency` concurrent streams; in the second also the same with
`"reward_model"` on every request (scoring each answer before the final chunk), and `/v1/rewards`
latency and throughput. Prints ratios against the run without a reward model. Engines bind to the
server's default core list (cores 1..N-1; `STAGECHAT_ENGINE_CPUS="0|1"` gives each its own core).

    .venv/bin/python scripts/bench_rewards.py [--config stages.yaml --reward-model rm] [--concurrency 8]
        [--tokens 64] [--requests 20] [--env STAGECHAT_ENGINE_CPUS=0|1] [--json [FILE]]

Without --config: the random tiny family with a reward model made from its sft stage.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from bench_common import add_json_argument, concurrently, http_client, output, running, stream, timed_post

QUESTION = [{"role": "user", "content": "What is the capital of Kenya?"}]


def tiny_registry(root: Path) -> tuple[Path, str]:
    from models.reward_model import load_policy_as_classifier
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint

    make_tiny_checkpoint(root / "base")
    make_tiny_adapter(root / "base", root / "lora")
    model, tokenizer = load_policy_as_classifier(str(root / "base"), str(root / "lora"), root)
    model.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    path = root / "stages.yaml"
    path.write_text(
        "engine: {max_model_len: 512, dtype: float32}\nstages:\n"
        f"  base:\n    model: {root / 'base'}\n  sft:\n    adapter: {root / 'lora'}\n    base: base\n"
        f"reward_models:\n  rm:\n    model: {root / 'rm'}\n"
    )
    return path, "rm"


async def chat(client, stage, tokens, reward_model=None) -> tuple[float, int]:
    """(TTFT in s, completion tokens) of one streamed answer."""
    body = {
        "model": stage,
        "messages": QUESTION,
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    if reward_model:
        body["reward_model"] = reward_model
    r = await stream(client, "/v1/chat/completions", body)
    return r.first_chunk or float("nan"), r.tokens


async def measure(url, stage, args, reward_model=None) -> dict[str, float]:
    async with http_client(url, timeout=300) as client:
        await chat(client, stage, 4, reward_model)  # warm
        ttfts = [(await chat(client, stage, 8, reward_model))[0] for _ in range(args.requests)]
        results, seconds = await concurrently(
            chat(client, stage, args.tokens, reward_model) for _ in range(args.concurrency)
        )
    return {"ttft_p50_ms": 1000 * statistics.median(ttfts), "tok_s": sum(n for _, n in results) / seconds}


async def score_figures(url, rm, args) -> dict[str, float]:
    item = {"messages": QUESTION, "completion": "The capital of Kenya is Nairobi. " * 4}
    async with http_client(url, timeout=300) as client:
        latencies = []
        for _ in range(args.requests):
            r, seconds = await timed_post(client, "/v1/rewards", {"model": rm, "input": [item]})
            r.raise_for_status()
            latencies.append(seconds)
        r, batch = await timed_post(client, "/v1/rewards", {"model": rm, "input": [item] * 64})
        r.raise_for_status()
    return {"score_p50_ms": 1000 * statistics.median(latencies), "scores_per_s_batch64": 64 / batch}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None)
    p.add_argument("--reward-model", default=None)
    p.add_argument("--stage", default="sft")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the servers (repeatable)")
    add_json_argument(p)
    args = p.parse_args()
    import yaml

    from server.launcher import stagechat_server

    env = dict(e.split("=", 1) for e in args.env)
    with output(args) as out:
        work = Path(tempfile.mkdtemp(prefix="bench-rewards-"))
        if args.config:
            config, rm = Path(args.config).resolve(), args.reward_model
        else:
            config, rm = tiny_registry(work)
        raw = yaml.safe_load(config.read_text())
        without = work / "without.yaml"
        without.write_text(
            yaml.safe_dump(
                {k: v for k, v in raw.items() if k != "reward_models"}
                | {"stages": {n: {k: v for k, v in s.items() if k != "reward_model"} for n, s in raw["stages"].items()}}
            )
        )

        figures: dict[str, dict[str, float]] = {}
        with running(stagechat_server(without, work / "data-a", ("--no-ui",), env=env)) as server:
            figures["one engine"] = asyncio.run(measure(server.url, args.stage, args))
        with running(stagechat_server(config, work / "data-b", ("--no-ui",), env=env)) as server:
            figures["+ idle reward engine"] = asyncio.run(measure(server.url, args.stage, args))
            figures["+ scoring every answer"] = asyncio.run(measure(server.url, args.stage, args, rm))
            figures["scoring"] = asyncio.run(score_figures(server.url, rm, args))
        out.update(env=env, figures=figures)
        base = figures["one engine"]
        for name in ("one engine", "+ idle reward engine", "+ scoring every answer"):
            f = figures[name]
            print(
                f"{name:24s} TTFT p50 {f['ttft_p50_ms']:7.1f} ms ({f['ttft_p50_ms'] / base['ttft_p50_ms']:.2f}×)  "
                f"{args.concurrency} streams {f['tok_s']:7.0f} tok/s ({f['tok_s'] / base['tok_s']:.2f}×)"
            )
        s = figures["scoring"]
        print(
            f"/v1/rewards: one input p50 {s['score_p50_ms']:.1f} ms; 64 inputs {s['scores_per_s_batch64']:.0f} scores/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
