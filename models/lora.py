"""The LoRA set-up every policy round shares: a trainable policy on a checkpoint, and saving its adapter.

An adapter from-stage is loaded as a trainable PeftModel and continued (without `is_trainable=True`
training silently changes nothing, TRL issue 6700); TRL then keeps a frozen copy as its reference.
A full-checkpoint from-stage gets a fresh LoRA config for the trainer to apply, on the projections
vLLM's Llama-family models accept. This module knows PEFT and transformers; it knows nothing about
rounds, registries or data.
"""

from __future__ import annotations

from pathlib import Path

# What vLLM's Llama-family models accept as LoRA targets (no embeddings, no lm_head).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_tokenizer(checkpoint: str):
    """The checkpoint's tokenizer (adapters share it), with a pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def trainable_policy(checkpoint: str, start_adapter: str | None, rank: int):
    """(model, peft_config): `start_adapter` continued as a trainable PeftModel (peft_config None), or the
    bare checkpoint with a fresh rank-`rank` LoRA config on the targets it has, for the trainer to apply."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    if start_adapter is not None:
        return PeftModel.from_pretrained(model, start_adapter, is_trainable=True), None
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return model, LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.0,
        bias="none",
        target_modules=[t for t in LORA_TARGETS if t in present],
        task_type="CAUSAL_LM",
    )


def save_adapter(model, tokenizer, out_dir: Path) -> None:
    """Only the trained adapter (TRL adds a frozen "ref" copy when continuing one), and the tokenizer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, selected_adapters=["default"], save_embedding_layers=False)
    tokenizer.save_pretrained(out_dir)
