"""The TRL/transformers training arguments every trainer here shares on a CPU.

fp32 (TRL defaults to bf16 autocast; on these CPUs fp32 is faster and stable), no gradient
checkpointing (tiny models have memory to spare; recomputation only costs time), no checkpoints,
reports or dataloader workers: the trainers write nothing but what their callers save. The schedule
defaults to the rounds' (a short warm-up, then a constant rate). This module knows the argument
names; each caller adds its method's own (beta, max_length, ...).
"""

from __future__ import annotations

from typing import Protocol


class Plan(Protocol):
    batch_size: int
    lr: float
    seed: int


def cpu_training_args(
    output_dir: str,
    plan: Plan,
    *,
    steps: int,
    scheduler: str = "constant_with_warmup",
    warmup_steps: int | None = None,
    logging_steps: int | None = None,
    progress_bar: bool = False,
) -> dict:
    return dict(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=plan.batch_size,
        learning_rate=plan.lr,
        lr_scheduler_type=scheduler,
        warmup_steps=min(5, steps // 10) if warmup_steps is None else warmup_steps,
        logging_steps=logging_steps or max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        seed=plan.seed,
        disable_tqdm=not progress_bar,
    )
