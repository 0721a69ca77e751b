"""Preference optimisation: TRL's DPOTrainer continues the SFT adapter on chosen/rejected pairs
(the demo family's `dpo` stage: each ranking's best answer against each other one, `corpus.best_pairs`).

The SFT adapter is loaded as a trainable PeftModel; TRL then copies it into a frozen "ref" adapter
and uses that as the reference policy, so no second model is held in memory. Output: a new full
LoRA adapter on the base checkpoint (not a delta on SFT), which vLLM serves like the SFT one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from models.demo.sft import AdapterPlan, common_args, save_adapter


def train_dpo(
    base_dir: Path, sft_dir: Path, rows: list[dict], plan: AdapterPlan, out_dir: Path, beta: float = 0.1
) -> float:
    """Train and save the preference-tuned adapter; returns the final training loss."""
    from trl import DPOConfig, DPOTrainer  # heavy import, only when training

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, sft_dir, is_trainable=True)
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    with tempfile.TemporaryDirectory() as scratch:
        args = DPOConfig(
            **common_args(plan, scratch),
            beta=beta,
            # DPO alone can lower the chosen answer's likelihood too (only the margin matters);
            # the added SFT term on the chosen answer (RPO) keeps it the model's greedy reply.
            loss_type=["sigmoid", "sft"],
            loss_weights=[1.0, 1.0],
            max_length=160,
        )
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        result = trainer.train()
    save_adapter(trainer.model, base_dir, out_dir)
    return float(result.training_loss)
