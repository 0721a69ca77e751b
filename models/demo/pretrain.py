"""Pre-training from scratch with plain PyTorch: a small LlamaForCausalLM on packed token blocks.

Used for the base model (prose) and for the draft model (preferred-style dialogues plus prose). It
knows the model shape and the training loop; what the text says is the caller's business.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from models.demo.tokenizer import copy_tokenizer_files

# vLLM's CPU attention kernels exist only for some head sizes (24 failed, 32 and 64 work).
SUPPORTED_HEAD_DIMS = (32, 64)


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class TrainPlan:
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup: int = 20
    seed: int = 0


def make_model(shape: ModelShape, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LlamaForCausalLM:
    if shape.hidden % shape.heads or shape.head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {shape.hidden}/{shape.heads} must be one of {SUPPORTED_HEAD_DIMS} (vLLM CPU)")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        head_dim=shape.head_dim,
        max_position_embeddings=512,
        tie_word_embeddings=True,  # half the parameters of a tiny model would otherwise be the lm head
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def pack(texts: list[str], tokenizer: PreTrainedTokenizerBase, seq_len: int, rendered: bool = False) -> torch.Tensor:
    """bos + text + eos for each text, concatenated and cut into [n, seq_len] blocks.

    `rendered`: the texts come from the chat template, which already writes bos and every eos.
    """
    ids: list[int] = []
    for row in tokenizer(texts, add_special_tokens=not rendered).input_ids:  # the post-processor adds bos
        ids.extend(row)
        if not rendered:
            ids.append(tokenizer.eos_token_id)
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def train_causal_lm(
    model: LlamaForCausalLM,
    blocks: torch.Tensor,
    plan: TrainPlan,
    desc: str,
    on_step: Callable[[int], None] | None = None,
) -> float:
    """AdamW with warmup + cosine decay over `plan.steps`; returns the mean loss of the last 10% of steps."""
    torch.manual_seed(plan.seed)
    rng = random.Random(plan.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, betas=(0.9, 0.95), weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < plan.warmup:
            return plan.lr * (step + 1) / plan.warmup
        progress = (step - plan.warmup) / max(1, plan.steps - plan.warmup)
        return plan.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    order: list[int] = []
    tail: list[float] = []
    bar = tqdm(range(plan.steps), desc=desc, unit="step", mininterval=1.0)
    for step in bar:
        if len(order) < plan.batch_size:  # reshuffle each epoch over the blocks
            order += rng.sample(range(len(blocks)), len(blocks))
        batch = blocks[[order.pop() for _ in range(plan.batch_size)]]
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if step >= plan.steps * 0.9:
            tail.append(loss.item())
        if on_step is not None:
            on_step(step + 1)
    model.eval()
    return sum(tail) / max(1, len(tail))


def save_checkpoint(model: LlamaForCausalLM, tokenizer_dir: Path, out_dir: Path) -> None:
    """A self-contained HF checkpoint dir (safetensors + config + tokenizer files) that vLLM loads."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    copy_tokenizer_files(tokenizer_dir, out_dir)
