"""The draft model for vLLM's `draft_model` speculative decoding: the base with most of its layers dropped.

vLLM needs the draft to share the target's vocabulary and a head size its CPU attention supports. A
draft pays only when its guesses land, and the chat stages' answers are facts ("The capital of Kenya is
Nairobi."): a draft trained from scratch (2 layers, width 64) knew few of them and had 0.40-0.45 of its
tokens accepted on the demo family. So the draft starts as a copy of the base — its embeddings, a few
of its layers, its final norm — and keeps the base's knowledge; it is then trained on what the chat
stages should say — dialogues answered in the preferred (RLHF) style — mixed with prose so it also
drafts passably for the base stage (0.81-0.89 accepted on the chat stages). On a CPU a forward pass
costs mostly per-step overhead, so the wider draft costs little more per guess.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from models.demo.pretrain import TrainPlan, pack, save_checkpoint, train_causal_lm


def layer_dropped_copy(base_dir: Path, keep: tuple[int, ...]):
    """The base's model (its config, embeddings, final norm and head) with only the layers `keep`, in order."""
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = len(keep)
    model = type(base)(config)
    model.generation_config = base.generation_config
    source = base.state_dict()

    def from_base(name: str) -> str:
        if not name.startswith("model.layers."):
            return name
        index = int(name.split(".")[2])
        return name.replace(f"model.layers.{index}.", f"model.layers.{keep[index]}.", 1)

    model.load_state_dict({name: source[from_base(name)] for name in model.state_dict()})
    return model


def train_draft(
    tokenizer: PreTrainedTokenizerBase,
    base_dir: Path,
    keep_layers: tuple[int, ...],
    dialogues: list[list[dict]],
    prose: list[str],
    plan: TrainPlan,
    out_dir: Path,
) -> float:
    chats = [tokenizer.apply_chat_template(d, tokenize=False) for d in dialogues]
    blocks = pack(chats, tokenizer, plan.seq_len, rendered=True)
    prose_blocks = pack(prose, tokenizer, plan.seq_len)
    # Two chat blocks per prose block: speculation matters most on the chat stages.
    keep = random.Random(plan.seed).sample(range(len(prose_blocks)), min(len(prose_blocks), len(blocks) // 2))
    blocks = torch.cat([blocks, prose_blocks[keep]])
    model = layer_dropped_copy(base_dir, keep_layers)
    loss = train_causal_lm(model, blocks, plan, desc="draft")
    save_checkpoint(model, base_dir, out_dir)
    return loss
