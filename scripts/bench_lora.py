"""What do LoRA adapters cost on the CPU backend, and what do stagechat's grouped LoRA ops save?

One engine per configuration, `AsyncLLM` called directly (no HTTP), 32 streams × 128 tokens
(ignore_eos), the median of 3 runs per cell, all in one run:
  - no LoRA: the engine started without `enable_lora` (base requests only): the ceiling;
  - vLLM's LoRA ops (`STAGECHAT_FAST_LORA_OPS=0`) and stagechat's grouped ops (`server/lora_ops.py`):
    base alone, one adapter (rlhf) alone, base/sft/rlhf mixed.
The engine is sized as the pool sizes it (max_loras = adapters + spare slots + 1).

    .venv/bin/python scripts/bench_lora.py [--family DIR] [--json [FILE]]

--family: a folder with base/, sft/, rlhf/ (the demo family).
Without --family it makes a demo-shaped random family (4 layers, width 256, rank-16 adapters).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from bench_common import PROMPT, add_json_argument, concurrently, direct_stream, engine_env_defaults, output

STREAMS, TOKENS, REPEATS = 32, 128, 3


def family(root: Path | None, work: Path) -> tuple[Path, Path, Path]:
    if root is not None:
        return root / "base", root / "sft", root / "rlhf"
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint

    base = make_tiny_checkpoint(work / "base", layers=4, hidden=256, heads=4)
    return (
        base,
        make_tiny_adapter(base, work / "sft", rank=16, seed=1),
        make_tiny_adapter(base, work / "rlhf", rank=16, seed=2),
    )


async def measure(base: Path, adapters: dict[str, Path] | None) -> dict[str, float]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.lora.request import LoRARequest
    from vllm.v1.engine.async_llm import AsyncLLM

    from server.pool import SPARE_LORA_SLOTS, lora_rank
    from server.vllm_engine import with_default_dtype

    args = {"model": str(base), "max_model_len": 512}
    if adapters:
        args.update(
            enable_lora=True,
            max_loras=len(adapters) + SPARE_LORA_SLOTS + 1,
            max_lora_rank=max(lora_rank(str(p)) for p in adapters.values()),
        )
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**with_default_dtype(args)))  # as the pool runs it
    ids = llm.get_tokenizer().encode(PROMPT)
    loras = {name: LoRARequest(name, i + 1, str(path)) for i, (name, path) in enumerate((adapters or {}).items())}
    counter = iter(range(10**9))

    async def one(stage: str) -> int:
        _, n = await direct_stream(llm, ids, TOKENS, f"r{next(counter)}", lora=loras.get(stage))
        return n

    async def load(stages: list[str]) -> float:
        runs = []
        for _ in range(REPEATS):
            tokens, seconds = await concurrently(one(stages[i % len(stages)]) for i in range(STREAMS))
            runs.append(sum(tokens) / seconds)
        return statistics.median(runs)

    try:
        for stage in ["base", *loras]:  # warm every adapter
            await one(stage)
        if not adapters:
            return {"base": await load(["base"])}
        return {
            "base": await load(["base"]),
            "rlhf": await load(["rlhf"]),
            "mixed": await load(["base", "sft", "rlhf"]),
        }
    finally:
        llm.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", type=Path, default=None)
    add_json_argument(p)
    args = p.parse_args()
    engine_env_defaults("2", bind_like_stagechat=True)
    from server.lora_ops import ENV

    with output(args) as figures:
        with tempfile.TemporaryDirectory() as tmp:
            base, sft, rlhf = family(args.family, Path(tmp))
            adapters = {"sft": sft, "rlhf": rlhf}
            rows = {"no LoRA (enable_lora off)": asyncio.run(measure(base, None))}
            for label, value in (("vLLM's LoRA ops", "0"), ("stagechat grouped LoRA ops", "1")):
                os.environ[ENV] = value  # read by the plugin in the engine-core process
                rows[label] = asyncio.run(measure(base, adapters))

        before, after = rows["vLLM's LoRA ops"], rows["stagechat grouped LoRA ops"]
        figures.update(
            streams=STREAMS,
            tokens=TOKENS,
            repeats=REPEATS,
            checkpoint=str(base),
            engine_cores=os.environ["VLLM_CPU_OMP_THREADS_BIND"],
            tok_s=rows,
            grouped_over_vllm_ops={k: after[k] / before[k] for k in before},
        )
        print(
            f"\n{STREAMS} streams × {TOKENS} tokens, {base}, engine cores {figures['engine_cores']}, "
            f"tok/s (median of {REPEATS})"
        )
        print(f"{'engine':<30} {'base':>8} {'rlhf':>8} {'mixed':>8}")
        for label, r in rows.items():
            print(
                f"{label:<30} {r['base']:>8.0f} {r.get('rlhf', float('nan')):>8.0f} "
                f"{r.get('mixed', float('nan')):>8.0f}"
            )
        print("grouped / vLLM's ops: " + ", ".join(f"{k} {after[k] / before[k]:.2f}x" for k in before))


if __name__ == "__main__":
    main()
