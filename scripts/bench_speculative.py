"""Does per-request speculative decoding pay, and what does the engine policy cost? Measured in one run.

Speed: one `stagechat serve --max-engines 1` (one engine lives at a time, so no idle neighbour
skews a figure); per speculative variant (off first, then each method) the first request's latency
(the variant's cold start: evicting the previous engine and starting this one), then per stage at
each concurrency: tokens/s, TTFT p50, acceptance rate and mean acceptance length (vLLM's per-request
figures from the final SSE chunk). Prints the speedup of each method over off at the same stage
and concurrency.

--answers measures chat answers as users get them: each request ends where the model ends its answer
(no ignore_eos; tokens past an answer's end are never served in a chat), over the eval's held-out
questions (`heldout.eval_prompts`, facts only; `--split dev` for the dev split's, to choose settings
such as num_speculative_tokens without tuning on test), one each. Both methods produce the same tokens at
temperature 0, so the tok/s ratio is the ratio of answer latencies.

Policy (--policy): `--max-engines 2`; TTFT at one stream with one engine live, with a second
(idle) engine live, and with the second one busy; then the same with each engine bound to its own
core (STAGECHAT_ENGINE_CPUS="0|1", which sets VLLM_CPU_OMP_THREADS_BIND per engine).

    .venv/bin/python scripts/bench_speculative.py [--config models/stages.yaml] [--stages base sft]
        [--concurrency 1 4 16] [--tokens 128] [--answers [--split dev]] [--policy] [--json [FILE]]

Without --config: models/stages.yaml when the demo family is built (data/demo/{base,sft,rlhf,draft}), else a random tiny
family (an 8-layer target, a 1-layer draft with the same tokenizer: its acceptance is near zero,
so it shows the cost side only).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_common import add_json_argument, http_client, output, stream

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "What is the capital of Kenya?",
    "What is the capital of France?",
    "Tell me about Japan.",
    "What is the capital of Peru?",
    "Which city is the capital of Norway?",
]


def start_server(config: Path, log: Path, max_engines: int, env: dict[str, str] | None = None):
    # Not `server.launcher.stagechat_server`: that gives the server a scratch data dir, and the demo
    # registry's paths point into the real one.
    from server.launcher import ChildServer

    return ChildServer(
        lambda port: [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--no-ui",
            "--log-level",
            "warning",
            "--max-engines",
            str(max_engines),
        ],
        log=log,
        env=env,
        timeout=600,
    )


async def stream_one(
    client, url: str, stage: str, method: str, tokens: int, question: str, ignore_eos: bool = True
) -> dict:
    body = {
        "model": stage,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": ignore_eos,
        "stream_options": {"include_usage": True},
        "speculative": method,
    }
    r = (await stream(client, f"{url}/v1/chat/completions", body)).raise_for_status()
    return {"ttft": r.first_chunk, "spec": r.speculative, "tokens": r.usage["completion_tokens"], "total": r.seconds}


async def load(
    url: str,
    stage: str,
    method: str,
    tokens: int,
    concurrency: int,
    requests: int,
    questions: list[str] = QUESTIONS,
    ignore_eos: bool = True,
) -> dict:
    queue = list(range(requests))
    results = []
    async with http_client(connections=concurrency + 4) as client:

        async def worker():
            while queue:
                i = queue.pop()
                results.append(
                    await stream_one(client, url, stage, method, tokens, questions[i % len(questions)], ignore_eos)
                )

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    drafted = sum(r["spec"]["draft_tokens"] for r in results if r["spec"])
    accepted = sum(r["spec"]["accepted_tokens"] for r in results if r["spec"])
    lengths = [r["spec"]["mean_acceptance_length"] for r in results if r["spec"]]
    return {
        "tok_s": sum(r["tokens"] for r in results) / elapsed,
        "ttft_ms": statistics.median(r["ttft"] * 1000 for r in results),
        "acceptance": accepted / drafted if drafted else None,
        "mean_len": statistics.mean(lengths) if lengths else None,
    }


async def first_request(url: str, stage: str, method: str) -> float:
    async with http_client() as client:
        began = time.perf_counter()
        await stream_one(client, url, stage, method, 1, QUESTIONS[0])
        return time.perf_counter() - began


def bench_speed(
    config: Path,
    logs: Path,
    stages: list[str],
    methods: list[str],
    levels: list[int],
    tokens: int,
    answers: bool = False,
    split: str = "test",
) -> dict:
    # Natural answers are ~10 tokens: many distinct questions per cell, so one is not the whole figure.
    questions, requests = (answer_questions(split), 48) if answers else (QUESTIONS, 4)
    server = start_server(config, logs / "speed.log", max_engines=1)
    out = {"ready_s": server.ready_seconds, "cold_start_s": {}, "rows": []}
    try:
        for method in ["off", *methods]:
            out["cold_start_s"][method] = asyncio.run(first_request(server.url, stages[0], method))
            print(f"[{method}] first request (cold start) {out['cold_start_s'][method]:.1f} s", flush=True)
            for stage in stages:
                asyncio.run(load(server.url, stage, method, 8, 1, 1))  # warm this stage's path
                for c in levels:
                    row = {
                        "stage": stage,
                        "method": method,
                        "concurrency": c,
                        **asyncio.run(
                            load(
                                server.url,
                                stage,
                                method,
                                tokens,
                                c,
                                max(requests, c),
                                questions,
                                ignore_eos=not answers,
                            )
                        ),
                    }
                    out["rows"].append(row)
                    print(row, flush=True)
    finally:
        server.stop()
    return out


async def _ttft_series(url: str, stage: str, n: int = 8) -> float:
    async with http_client() as client:
        ttfts = [(await stream_one(client, url, stage, "off", 16, QUESTIONS[i % 5]))["ttft"] for i in range(n)]
    return statistics.median(ttfts) * 1000


async def _ttft_with_busy_neighbour(url: str, stage: str, method: str) -> float:
    background = asyncio.create_task(load(url, stage, method, 128, 4, 16))
    await asyncio.sleep(1.0)
    try:
        return await _ttft_series(url, stage)
    finally:
        await background


def bench_policy(config: Path, logs: Path, stage: str, method: str) -> dict:
    out = {}
    for label, env in (("auto binding", {}), ("one core per engine", {"STAGECHAT_ENGINE_CPUS": "0|1"})):
        server = start_server(config, logs / f"policy-{len(out)}.log", max_engines=2, env=env)
        try:
            r = {"ready_s": server.ready_seconds}
            r["ttft_one_live_ms"] = asyncio.run(_ttft_series(server.url, stage))
            r["variant_cold_start_s"] = asyncio.run(first_request(server.url, stage, method))
            r["ttft_two_live_idle_ms"] = asyncio.run(_ttft_series(server.url, stage))
            r["ttft_two_live_busy_ms"] = asyncio.run(_ttft_with_busy_neighbour(server.url, stage, method))
            r["tok_s_one_stream"] = asyncio.run(load(server.url, stage, "off", 128, 1, 4))["tok_s"]
        finally:
            server.stop()
        out[label] = r
        print(label, r, flush=True)
    return out


def answer_questions(split: str = "test") -> list[str]:
    from models.demo.heldout import eval_prompts

    return [p.messages[-1]["content"] for p in eval_prompts(split=split) if p.kind == "fact"]


def tiny_family(root: Path) -> Path:
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint

    make_tiny_checkpoint(root / "base", layers=8, hidden=256, heads=4)
    make_tiny_adapter(root / "base", root / "lora")
    make_tiny_checkpoint(root / "draft", layers=1, hidden=64, heads=2, seed=3)
    (root / "stages.yaml").write_text(
        "engine: {max_model_len: 512, dtype: float32}\n"
        "stages:\n"
        "  base:\n"
        "    model: ./base\n"
        "    speculative:\n"
        "      draft_model: {method: draft_model, model: ./draft, num_speculative_tokens: 4}\n"
        "      ngram: {method: ngram, num_speculative_tokens: 4, prompt_lookup_max: 4, prompt_lookup_min: 2}\n"
        "  sft: {adapter: ./lora, base: base}\n"
    )
    return root / "stages.yaml"


def print_table(speed: dict) -> None:
    rows = speed["rows"]
    off = {(r["stage"], r["concurrency"]): r for r in rows if r["method"] == "off"}
    print(
        f"\n{'stage':<8} {'method':<12} {'conc':>4} {'tok/s':>8} {'TTFT ms':>8} {'accept':>7} "
        f"{'mean len':>8} {'speedup':>8}"
    )
    for r in rows:
        base = off[(r["stage"], r["concurrency"])]
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(
            f"{r['stage']:<8} {r['method']:<12} {r['concurrency']:>4} {r['tok_s']:>8.1f} {r['ttft_ms']:>8.1f} "
            f"{fmt(r['acceptance'], '.2f'):>7} {fmt(r['mean_len'], '.2f'):>8} {r['tok_s'] / base['tok_s']:>7.2f}x"
        )
    print(
        "cold start (first request of a variant, incl. evicting the previous engine): "
        + ", ".join(f"{m} {s:.1f} s" for m, s in speed["cold_start_s"].items())
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--stages", nargs="+", default=None, help="default: every stage")
    p.add_argument("--methods", nargs="+", default=None, help="default: the first stage's methods")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--answers", action="store_true", help="requests end where the answer ends (see above)")
    from models.demo.heldout import SPLITS

    p.add_argument("--split", choices=sorted(SPLITS), default="test", help="whose questions --answers asks")
    p.add_argument("--policy", action="store_true", help="also measure the engine policy")
    p.add_argument("--skip-speed", action="store_true")
    add_json_argument(p)
    p.add_argument("--logs", type=Path, default=REPO / "data" / "bench-logs", help="server logs go here")
    args = p.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)

    from server.registry import load_registry

    with output(args) as results, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = args.config
        if config is None:
            demo = REPO / "models" / "stages.yaml"
            built = all((REPO / "data" / "demo" / d).is_dir() for d in ("base", "sft", "rlhf", "draft"))
            config = demo if built else tiny_family(work)
        registry = load_registry(config)
        stages = args.stages or list(registry.stages)
        methods = args.methods or list(registry.speculative_methods(stages[0]))
        print(f"registry {config}: stages {stages}, methods {methods}", flush=True)
        results["config"] = str(config)
        if not args.skip_speed:
            results["speed"] = bench_speed(
                config, args.logs, stages, methods, args.concurrency, args.tokens, args.answers, args.split
            )
        if args.policy:
            results["policy"] = bench_policy(config, args.logs, stages[0], methods[0])
        if "speed" in results:
            print_table(results["speed"])
        for label, r in results.get("policy", {}).items():
            print(f"policy [{label}]: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))


if __name__ == "__main__":
    main()
