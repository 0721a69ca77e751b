"""Fixes for two vLLM 0.32 CPU bugs stagechat hits, applied by a vLLM general plugin (entry point
`vllm.general_plugins`), so they run in every vLLM process: the engine core and its workers.

**AMX without permission.** On a CPU with AMX, vLLM's bf16 attention kernel
(`cpu_attention_with_kv_cache`, isa "amx") runs tile instructions, which Linux allows only in a
process that asked for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`). oneDNN asks the first
time it runs a bf16 matmul, so an engine whose first step reaches attention before any oneDNN
matmul dies of SIGILL. With LoRA enabled (its layers do not go through oneDNN) the worker was
killed on its first request (exit code -4), and every stage on that engine with it. `allow_amx`
asks for the permission up front (`torch.cpu._init_amx`), as oneDNN would.

**Prompt logprobs on an engine with LoRA enabled.** vLLM wraps the logits processor
(`LogitsProcessorWithLoRA`) and adds each request's lm_head LoRA term through
`PunicaWrapperCPU.add_lora_logits`, indexed by `sampler_indices` — one entry per request in the
step. Prompt logprobs compute logits for one request's prompt tokens (T rows) through the same
wrapper: with one request in the step the single index broadcasts, but with several the shapes
clash (T rows against N indices) and the einsum raises inside the engine core, which kills the
engine — every request on it then fails. An echo / `prompt_logprobs` request that shares a step
with any other request did exactly that. The lm_head LoRA term is zero when no served adapter
targets lm_head (none of stagechat's do: LoRA on attention and MLP projections). Then skipping it
is exact, whatever the shapes. So the patched method returns the logits unchanged when the lm_head
LoRA weights are all zero and the rows do not match the indices; everything else goes to vLLM's
own method.

Knows vLLM's CPU LoRA wrapper and torch's AMX switch; nothing else.
"""

from __future__ import annotations

_original = None


def _add_lora_logits(self, y, x, lora_a_stacked, lora_b_stacked, scale, *, buffer=None, **kwargs):
    rows = x.reshape(-1, x.shape[-1]).shape[0]
    indices = self.sampler_indices
    if rows != indices.shape[0] and indices.shape[0] != 1 and not bool(lora_b_stacked.any()):
        return y  # prompt logprobs in a step with other requests, and no adapter touches lm_head
    return _original(self, y, x, lora_a_stacked, lora_b_stacked, scale, buffer=buffer, **kwargs)


def allow_amx() -> None:
    """Ask Linux for this process's AMX tile state, where the CPU has AMX."""
    import torch

    if torch.cpu._is_amx_tile_supported():
        torch.cpu._init_amx()


def register() -> None:
    """vLLM general plugin: AMX permission and the CPU LoRA wrapper's logits path (a no-op off the CPU)."""
    global _original
    if _original is not None:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    allow_amx()
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    _original = PunicaWrapperCPU.add_lora_logits
    PunicaWrapperCPU.add_lora_logits = _add_lora_logits
