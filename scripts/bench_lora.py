"""What do LoRA adapters cost on the CPU backend, and what do stagechat's grouped LoRA ops save?

One engine per configuration, `AsyncLLM` called directly (no HTTP), 32 streams × 128 tokens
(ignore_eos), the median of 3 runs per cell, all in one run:
  - no LoRA: the engine started without `enable_lora` (base requests only): the ceiling;
  - vLLM's LoRA ops (`STAGECHAT_FAST_LORA_OPS=0`) and stagechat's grouped ops (`server/lora_ops.py`):
    base alone, one adapter (rlhf) alone, base/sft/rlhf mixed.
The engine is sized as the pool sizes it (max_loras = adapters + spare slots + 1).

    .venv/bin/python scripts/bench_lora.py [--family DIR]   # DIR with base/, sft/, rlhf/ (the demo family)

Without --family it makes a demo-shaped random family (4 layers, width 256, rank-16 adapters).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.lora_ops import ENV  # noqa: E402
from server.pool import SPARE_LORA_SLOTS, _lora_rank  # noqa: E402
from server.vllm_engine import with_default_dtype  # noqa: E402

PROMPT = "The capital of Kenya is"
STREAMS, TOKENS, REPEATS = 32, 128, 3


def family(root: Path | None, work: Path) -> tuple[Path, Path, Path]:
    if root is not None:
        return root / "base", root / "sft", root / "rlhf"
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint

    base = make_tiny_checkpoint(work / "base", layers=4, hidden=256, heads=4)
    return base, make_tiny_adapter(base, work / "sft", rank=16, seed=1), make_tiny_adapter(base, work / "rlhf",
                                                                                            rank=16, seed=2)


async def measure(base: Path, adapters: dict[str, Path] | None) -> dict[str, float]:
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    args = {"model": str(base), "max_model_len": 512}
    if adapters:
        args.update(enable_lora=True, max_loras=len(adapters) + SPARE_LORA_SLOTS + 1,
                    max_lora_rank=max(_lora_rank(str(p)) for p in adapters.values()))
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**with_default_dtype(args)))  # as the pool runs it
    ids = llm.get_tokenizer().encode(PROMPT)
    loras = {name: LoRARequest(name, i + 1, str(path)) for i, (name, path) in enumerate((adapters or {}).items())}
    counter = iter(range(10**9))

    async def one(stage: str) -> int:
        params = SamplingParams(max_tokens=TOKENS, temperature=0, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
        n = 0
        async for out in llm.generate(TokensPrompt(prompt_token_ids=ids), params, f"r{next(counter)}",
                                      lora_request=loras.get(stage)):
            n += len(out.outputs[0].token_ids)
        return n

    async def load(stages: list[str]) -> float:
        runs = []
        for _ in range(REPEATS):
            began = time.perf_counter()
            tokens = await asyncio.gather(*(one(stages[i % len(stages)]) for i in range(STREAMS)))
            runs.append(sum(tokens) / (time.perf_counter() - began))
        return statistics.median(runs)

    try:
        for stage in ["base", *loras]:  # warm every adapter
            await one(stage)
        if not adapters:
            return {"base": await load(["base"])}
        return {"base": await load(["base"]), "rlhf": await load(["rlhf"]),
                "mixed": await load(["base", "sft", "rlhf"])}
    finally:
        llm.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from server.vllm_engine import default_engine_cpus

    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", default_engine_cpus() or "auto")
    with tempfile.TemporaryDirectory() as tmp:
        base, sft, rlhf = family(args.family, Path(tmp))
        adapters = {"sft": sft, "rlhf": rlhf}
        rows = {"no LoRA (enable_lora off)": asyncio.run(measure(base, None))}
        for label, value in (("vLLM's LoRA ops", "0"), ("stagechat grouped LoRA ops", "1")):
            os.environ[ENV] = value  # read by the plugin in the engine-core process
            rows[label] = asyncio.run(measure(base, adapters))

    print(f"\n{STREAMS} streams × {TOKENS} tokens, {base}, engine cores {os.environ['VLLM_CPU_OMP_THREADS_BIND']}, "
          f"tok/s (median of {REPEATS})")
    print(f"{'engine':<30} {'base':>8} {'rlhf':>8} {'mixed':>8}")
    for label, r in rows.items():
        print(f"{label:<30} {r['base']:>8.0f} {r.get('rlhf', float('nan')):>8.0f} {r.get('mixed', float('nan')):>8.0f}")
    before, after = rows["vLLM's LoRA ops"], rows["stagechat grouped LoRA ops"]
    print("grouped / vLLM's ops: " + ", ".join(f"{k} {after[k] / before[k]:.2f}x" for k in before))


if __name__ == "__main__":
    main()
