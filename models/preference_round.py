"""`stagechat rlhf-round --method kto|dpo`: offline preference tuning on the collected ratings.

Steps: export the store's feedback as a TRL dataset (`server.export`, kto or dpo) → check there are
at least `min_ratings` usable rows → train a LoRA adapter with TRL's KTOTrainer or DPOTrainer,
starting from the from-stage (`models.lora`: an adapter stage is continued, TRL keeping its starting
weights as the frozen reference; a full checkpoint gets a fresh LoRA) → the round's lifecycle
(`models.rounds`): saved to `{data_dir}/rounds/<name>`, registered, optionally served by a reload.

The new stage is `adapter: {data_dir}/rounds/<name>` with `base: <from-stage>`: `base:` is the
stage's parent (what `/v1/models` reports as `parent`), and the pool serves it on the engine of the
from-stage's root checkpoint. The adapter itself is a full LoRA on that root checkpoint, as vLLM
needs, not a delta on the from-stage. It inherits the from-stage's sampling defaults.

Online RL against a reward model (`--method rloo`) is `models.rl_round`.
This module knows the round's plan and TRL; it knows nothing about HTTP serving or SQL.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.rounds import Round, RoundError
from models.training_args import cpu_training_args

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundPlan:
    """Training settings. Steps default to a few passes over the rows, bounded for a CPU."""

    method: str = "kto"
    steps: int | None = None  # None: ≈ 4 epochs, between 20 and 200 steps
    batch_size: int = 8
    lr: float = 5e-4
    beta: float = 0.1
    rank: int = 16  # a fresh LoRA only; a continued adapter keeps its own rank
    max_length: int = 160
    seed: int = 0

    def total_steps(self, rows: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(20, min(200, 4 * -(-rows // self.batch_size)))


@dataclass(frozen=True)
class RoundResult:
    name: str
    adapter_dir: Path
    rows: int
    steps: int
    train_seconds: float
    loss: float
    reloaded: dict[str, Any] | None = None


# -- data ----------------------------------------------------------------------------------------


def usable_rows(database_url: str, method: str) -> list[dict[str, Any]]:
    """The store's feedback as TRL rows of `method` (kto: rated answers; dpo: chosen/rejected pairs)."""
    from server.export import examples
    from server.store import Store

    store = Store(database_url)
    try:
        return list(examples(store, method))
    finally:
        store.close()


# -- training ------------------------------------------------------------------------------------


def train_adapter(
    checkpoint: str, start_adapter: str | None, rows: list[dict[str, Any]], plan: RoundPlan, out_dir: Path
) -> tuple[float, int]:
    """Train a LoRA adapter on `checkpoint` (continuing `start_adapter` when given); returns (loss, steps)."""
    import torch
    from datasets import Dataset

    from models.lora import load_tokenizer, save_adapter, trainable_policy

    torch.manual_seed(plan.seed)
    tokenizer = load_tokenizer(checkpoint)  # adapters share their checkpoint's tokenizer
    model, peft_config = trainable_policy(checkpoint, start_adapter, plan.rank)
    steps = plan.total_steps(len(rows))
    with tempfile.TemporaryDirectory() as scratch:
        common = dict(
            **cpu_training_args(scratch, plan, steps=steps),
            beta=plan.beta,
            max_length=plan.max_length,
        )
        if plan.method == "kto":
            from trl import KTOConfig, KTOTrainer

            good = sum(r["label"] for r in rows)
            bad = len(rows) - good
            # KTO's paper: weigh the rarer side up so desirable·n_good ≈ undesirable·n_bad.
            args = KTOConfig(
                **common, desirable_weight=max(1.0, bad / max(good, 1)), undesirable_weight=max(1.0, good / max(bad, 1))
            )
            trainer = KTOTrainer(
                model=model,
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                peft_config=peft_config,
            )
        else:
            from trl import DPOConfig, DPOTrainer

            # The SFT term on chosen answers keeps them likely: plain DPO can satisfy its margin by making
            # both answers unlikely, and then the tiny demo model drifts into text nobody rated.
            args = DPOConfig(**common, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])
            trainer = DPOTrainer(
                model=model,
                args=args,
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                peft_config=peft_config,
            )
        result = trainer.train()
    save_adapter(trainer.model, tokenizer, out_dir)
    return float(result.training_loss), steps


# -- the round -----------------------------------------------------------------------------------


def train_round(
    *,
    config: Path,
    from_stage: str,
    name: str,
    method: str,
    database_url: str,
    data_dir: Path,
    min_ratings: int = 1,
    plan: RoundPlan | None = None,
    server: str | None = None,
    admin_key: str | None = None,
) -> RoundResult:
    """Run one round (see the module docstring). Raises `RoundError` / `RegistryError`, changing nothing."""
    plan = plan or RoundPlan(method=method)
    round_ = Round.open(config, data_dir, from_stage, name)

    rows = usable_rows(database_url, method)
    if len(rows) < min_ratings:
        what = "rated answers (net up or down)" if method == "kto" else "chosen/rejected pairs"
        raise RoundError(
            f"only {len(rows)} usable {method} rows ({what}) in the store; "
            f"--min-ratings is {min_ratings}. Rate more answers first."
        )
    if method == "kto" and len({r["label"] for r in rows}) < 2:
        raise RoundError("KTO needs both liked and disliked answers; the store has only one kind")

    def meta(trained: tuple[float, int], seconds: float) -> dict[str, Any]:
        loss, steps = trained
        return {
            "name": name,
            "from_stage": from_stage,
            "method": method,
            "rows": len(rows),
            "steps": steps,
            "loss": loss,
            "train_seconds": round(seconds, 1),
            "plan": asdict(plan),
        }

    done = round_.run(
        lambda d: train_adapter(round_.checkpoint, round_.start_adapter, rows, plan, d),
        meta,
        description=f"RLHF round: {method.upper()} on {len(rows)} ratings, continuing {from_stage}",
        server=server,
        admin_key=admin_key,
    )
    loss, steps = done.result
    log.info("stage %s: %d %s rows, %d steps", name, len(rows), method, steps)
    return RoundResult(name, round_.out_dir, len(rows), steps, done.seconds, loss, done.reloaded)
