"""What does structured decoding cost? tok/s with and without a JSON schema, one server, one run.

One `stagechat serve` on a registry (default: the tiny random family, made here), then for each
concurrency level the same chat requests twice: free text (`max_tokens`, ignore_eos), and with
`response_format: json_schema` (vLLM's structured-output backend masks every step; the answer ends
when the JSON does). Throughput is completion tokens over wall time; the ratio is schema / free.
With --lm-eval it also runs a small local multiple-choice task through lm-evaluation-harness
(`local-completions`) on every stage, for the per-stage scores.

    .venv/bin/python scripts/bench_structured.py [--config stages.yaml] [--stage base] [--concurrency 1 8]
        [--lm-eval] [--json [FILE]]

Without --json it prints one JSON line per concurrency level (and one for lm-eval) as it goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from bench_common import add_json_argument, http_client, output, ratio, running

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "country": {"type": "string"},
        "population": {"type": "integer"},
        "facts": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city", "country", "population", "facts"],
}
MESSAGES = [{"role": "user", "content": "Tell me about Nairobi."}]


async def _one(client, stage: str, tokens: int, schema: bool, seed: int) -> int:
    extra = (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}}
        if schema
        else {"ignore_eos": True}
    )
    r = await client.post(
        "/v1/chat/completions",
        json={"model": stage, "messages": MESSAGES, "max_tokens": tokens, "temperature": 0.8, "seed": seed, **extra},
    )
    r.raise_for_status()
    answer = r.json()
    if schema and answer["choices"][0]["finish_reason"] == "stop":
        json.loads(answer["choices"][0]["message"]["content"])  # the schema was followed: it parses
    return answer["usage"]["completion_tokens"]


async def _load(url: str, stage: str, tokens: int, concurrency: int, schema: bool, rounds: int = 3) -> dict:
    async with http_client(url, connections=concurrency + 4) as client:
        await _one(client, stage, 8, schema, 0)  # warm: the schema's grammar compiles once
        began = time.perf_counter()
        done = 0
        for r in range(rounds):
            done += sum(
                await asyncio.gather(*(_one(client, stage, tokens, schema, r * 1000 + i) for i in range(concurrency)))
            )
        seconds = time.perf_counter() - began
    return {"tokens": done, "seconds": round(seconds, 2), "tok_s": round(done / seconds, 1)}


def _tiny_family(folder: Path) -> Path:
    from models.tiny import make_tiny_checkpoint

    make_tiny_checkpoint(folder / "base")
    (folder / "stages.yaml").write_text(
        "engine: {max_model_len: 512, dtype: float32}\nstages:\n  base: {model: ./base}\n"
    )
    return folder / "stages.yaml"


def _lm_eval(url: str, stages: list[str], tokenizer: str, folder: Path) -> dict[str, float]:
    """acc of a 12-question capital-city multiple-choice task per stage (local JSON, no hub)."""
    import os

    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    pairs = [
        ("Kenya", "Nairobi"),
        ("France", "Paris"),
        ("Japan", "Tokyo"),
        ("Peru", "Lima"),
        ("Egypt", "Cairo"),
        ("Spain", "Madrid"),
        ("Italy", "Rome"),
        ("Canada", "Ottawa"),
        ("Norway", "Oslo"),
        ("Chile", "Santiago"),
        ("Germany", "Berlin"),
        ("India", "New Delhi"),
    ]
    names = sorted({c for _, c in pairs})
    data = folder / "capitals.jsonl"
    data.write_text(
        "".join(json.dumps({"country": k, "choices": names, "answer": names.index(c)}) + "\n" for k, c in pairs)
    )
    (folder / "mc.yaml").write_text(
        f"task: capitals_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        'test_split: test\noutput_type: multiple_choice\ndoc_to_text: "The capital of {{country}} is"\n'
        'doc_to_choice: "{{choices}}"\ntarget_delimiter: " "\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n"
    )
    scores = {}
    for stage in stages:
        result = simple_evaluate(
            model="local-completions",
            tasks=["capitals_mc"],
            task_manager=TaskManager(include_path=str(folder)),
            model_args={
                "model": stage,
                "base_url": f"{url}/v1/completions",
                "tokenizer": tokenizer,
                "tokenizer_backend": "huggingface",
                "num_concurrent": 4,
                "max_retries": 1,
            },
        )
        scores[stage] = result["results"]["capitals_mc"]["acc,none"]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="a registry (default: the tiny random family)")
    parser.add_argument("--stage", default="base")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--lm-eval", action="store_true", help="also score every stage with lm-eval")
    add_json_argument(parser)
    args = parser.parse_args()
    from server.launcher import stagechat_server

    with output(args) as figures, tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = args.config or _tiny_family(tmp / "tiny")
        with running(stagechat_server(config.resolve(), tmp / "data", ("--no-ui",))) as server:
            figures["levels"] = []
            for c in args.concurrency:
                free = asyncio.run(_load(server.url, args.stage, args.tokens, c, schema=False))
                schema = asyncio.run(_load(server.url, args.stage, args.tokens, c, schema=True))
                figures["levels"].append(
                    {
                        "concurrency": c,
                        "free_text": free,
                        "json_schema": schema,
                        "schema_over_free": round(ratio(schema["tok_s"], free["tok_s"]), 3),
                    }
                )
                print(json.dumps(figures["levels"][-1]), flush=True)
            if args.lm_eval:
                import httpx

                from server.registry import load_registry

                stages = [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]]
                registry = load_registry(config.resolve())
                tokenizer = registry.stages[registry.root(args.stage)].model
                figures["lm_eval_acc"] = _lm_eval(server.url, stages, tokenizer, tmp)
                print(json.dumps({"lm_eval_acc": figures["lm_eval_acc"]}), flush=True)


if __name__ == "__main__":
    main()
