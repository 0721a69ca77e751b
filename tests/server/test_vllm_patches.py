"""`server.vllm_patches` on a real vLLM engine. (Its prompt-logprobs fix is exercised through the
served API in test_openai_clients.py.)"""

import asyncio

import pytest

from server.engine import SamplingSettings
from server.vllm_engine import VllmEngine


@pytest.mark.integration
def test_a_bf16_lora_engine_serves_a_one_token_prompt(tmp_path):
    """On a CPU with AMX, vLLM's bf16 attention ran tile instructions in a worker that had no
    permission for them: an engine with LoRA enabled died of SIGILL on its first one-token prompt
    (the demo family's warm-up), unless the plugin asked for the permission."""
    from models.tiny import make_tiny_checkpoint

    model = make_tiny_checkpoint(tmp_path / "base")
    engine = VllmEngine(str(model), engine_args={"max_model_len": 128, "dtype": "bfloat16"}, max_lora_rank=8)

    async def one_token_prompt() -> list[int]:
        await engine.start()
        try:
            settings = SamplingSettings(max_tokens=2, temperature=0.0, ignore_eos=True)
            return [
                t async for deltas in engine.generate([5], settings, "one-token") for d in deltas for t in d.token_ids
            ]
        finally:
            await engine.shutdown()

    assert len(asyncio.run(one_token_prompt())) == 2
