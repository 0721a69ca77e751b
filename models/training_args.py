"""The TRL/transformers training arguments every trainer here shares on a CPU.

fp32 (TRL defaults to bf16 autocast; on these CPUs fp32 is faster and stable), no gradient
checkpointing (tiny models have memory to spare; recomputation only costs time), no checkpoints,
reports or dataloader workers: the trainers write nothing but what their callers save. This module
knows the argument names; each caller adds its method's own (beta, max_length, ...).
"""

from __future__ import annotations


def cpu_training_args(
    output_dir: str,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    scheduler: str,
    warmup_steps: int = 0,
    logging_steps: int | None = None,
    progress_bar: bool = False,
) -> dict:
    return dict(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type=scheduler,
        warmup_steps=warmup_steps,
        logging_steps=logging_steps or max(1, steps // 10),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        seed=seed,
        disable_tqdm=not progress_bar,
    )
