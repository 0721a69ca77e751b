"""Supervised fine-tuning: TRL's SFTTrainer puts a LoRA adapter on the base model and teaches it to chat.

Input: the base checkpoint dir and conversational prompt-completion rows (see `corpus.sft_examples`);
loss falls on the assistant turn only. Output: a PEFT LoRA adapter dir that vLLM loads on the base.
The adapter targets only the projections vLLM's Llama supports for LoRA, with no extra saved modules.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.demo.tokenizer import copy_tokenizer_files
from models.lora import LORA_TARGETS  # what vLLM's Llama accepts; embeddings / lm_head stay frozen and unsaved
from models.training_args import cpu_training_args


@dataclass(frozen=True)
class AdapterPlan:
    steps: int
    batch_size: int
    lr: float
    rank: int = 16  # vLLM's max_lora_rank must be >= this; 16 is the usual server setting
    alpha: int = 32
    seed: int = 0


def lora_config(plan: AdapterPlan) -> LoraConfig:
    return LoraConfig(
        r=plan.rank,
        lora_alpha=plan.alpha,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
    )


def common_args(plan: AdapterPlan, output_dir: str) -> dict:
    """Training arguments shared by the demo's SFT and DPO: cosine schedule, a progress bar."""
    return cpu_training_args(
        output_dir,
        plan,
        steps=plan.steps,
        scheduler="cosine",
        warmup_steps=min(10, plan.steps // 10),
        progress_bar=True,
    )


def train_sft(base_dir: Path, rows: list[dict], plan: AdapterPlan, out_dir: Path) -> float:
    """Train and save the SFT adapter; returns the final training loss."""
    from trl import SFTConfig, SFTTrainer  # heavy import, only when training

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(**common_args(plan, scratch), max_length=128, packing=False)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(plan),
        )
        result = trainer.train()
    save_adapter(trainer.model, base_dir, out_dir)
    return float(result.training_loss)


def save_adapter(peft_model, base_dir: Path, out_dir: Path) -> None:
    """Only the trained "default" adapter (DPO adds a frozen "ref" copy), no embedding layers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir, selected_adapters=["default"], save_embedding_layers=False)
    copy_tokenizer_files(base_dir, out_dir)
