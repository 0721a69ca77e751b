"""The draft model for vLLM's `draft_model` speculative decoding: a much smaller Llama, same tokenizer.

It is trained from scratch, like the base, on what the chat stages should say — dialogues answered in
the preferred (RLHF) style — mixed with prose so it also drafts passably for the base stage. vLLM needs
the draft to share the target's vocabulary and a head size its CPU attention supports.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from models.demo.pretrain import ModelShape, TrainPlan, make_model, pack, save_checkpoint, train_causal_lm


def train_draft(
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_dir: Path,
    dialogues: list[list[dict]],
    prose: list[str],
    shape: ModelShape,
    plan: TrainPlan,
    out_dir: Path,
) -> float:
    chats = [tokenizer.apply_chat_template(d, tokenize=False) for d in dialogues]
    blocks = pack(chats, tokenizer, plan.seq_len, rendered=True)
    prose_blocks = pack(prose, tokenizer, plan.seq_len)
    # Two chat blocks per prose block: speculation matters most on the chat stages.
    keep = random.Random(plan.seed).sample(range(len(prose_blocks)), min(len(prose_blocks), len(blocks) // 2))
    blocks = torch.cat([blocks, prose_blocks[keep]])
    model = make_model(shape, tokenizer, seed=plan.seed)
    loss = train_causal_lm(model, blocks, plan, desc="draft")
    save_checkpoint(model, tokenizer_dir, out_dir)
    return loss
