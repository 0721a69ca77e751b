"""`VllmRewardEngine`: one reward model on vLLM's pooling runner (CPU or GPU build alike).

A reward model is a sequence-classification checkpoint with one label (`stagechat reward-model`
trains one). vLLM serves it with `runner="pooling"`: `AsyncLLM.encode` with the "classify" task
pools the last token and applies the score head; `use_activation=False` returns the raw score, the
number TRL's `RewardTrainer` trained (a sigmoid would squash it into (0, 1)). Measured on vLLM 0.32
CPU with a tiny Llama: the engine's score equals transformers' `logits[0, 0]` to 4 decimals.

The engine runs in its own processes, so scoring does not block the event loop; it binds its
OpenMP threads like the generation engines do (`server.vllm_engine`), sharing their core list on
small machines. It knows token ids and scores; nothing about chat templates, stages or HTTP.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from server.engine import EngineDead
from server.vllm_engine import cpu_lists_in_use, death_of, prepare_engine_env, with_default_dtype

log = logging.getLogger(__name__)

# Registry `engine:` arguments that make sense for a reward engine too (not LoRA or speculation).
SHARED_ENGINE_ARGS = ("dtype", "max_model_len", "enforce_eager", "max_num_seqs", "max_num_batched_tokens")

_ids = itertools.count()


class VllmRewardEngine:
    def __init__(self, model: str, *, engine_args: dict[str, Any] | None = None):
        self.model = model
        self._engine_args = {k: v for k, v in (engine_args or {}).items() if k in SHARED_ENGINE_ARGS}
        self._llm = None
        self._cpus: str | None = None
        self.tokenizer = None
        self.max_model_len = 0

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self._cpus = prepare_engine_env()
        args = AsyncEngineArgs(
            model=self.model, runner="pooling", disable_log_stats=True, **with_default_dtype(self._engine_args)
        )
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        self.tokenizer = self._llm.get_tokenizer()
        self.max_model_len = self._llm.model_config.max_model_len
        await self.score([self.tokenizer.encode("Hello", add_special_tokens=False) or [0]])  # warm up

    async def score(self, prompts: list[list[int]]) -> list[float]:
        """The reward model's score of each token sequence (each within `max_model_len`)."""
        return list(await asyncio.gather(*(self._one(ids) for ids in prompts)))

    async def _one(self, ids: list[int]) -> float:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        params = PoolingParams(task="classify", use_activation=False)
        result = None
        if (reason := self.dead()) is not None:
            raise EngineDead(reason)
        try:
            async for result in self._llm.encode(TokensPrompt(prompt_token_ids=ids), params, f"rm-{next(_ids)}"):  # noqa: B007
                pass  # the last output is the finished one
        except Exception as exc:
            if (reason := self.dead()) is not None:  # the supervisor restarts it (server/rewards.py)
                raise EngineDead(reason) from exc
            raise
        return float(result.outputs.data.reshape(-1)[0])

    def dead(self) -> str | None:
        return death_of(self._llm)

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        if self._cpus is not None:
            cpu_lists_in_use[self._cpus] -= 1
            self._cpus = None
