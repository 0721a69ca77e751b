"""`stagechat rlhf-round --method rloo`: optimise a stage online against a reward model (RLHF's RL step).

InstructGPT optimised the SFT model with PPO against a reward model, with a per-token KL penalty to
the SFT model. TRL 1.16 has no PPOTrainer; this round uses its `RLOOTrainer`, the closest: like
PPO-in-RLHF it puts `beta × KL(policy ‖ start)` into the reward (GRPO's `beta` defaults to 0, i.e.
no KL, and adds it to the loss instead), and its baseline is the mean reward of the other samples
of the same prompt (REINFORCE leave-one-out), so it needs no value model — on a CPU, that halves
the models to train. Each step samples `num_generations` answers per prompt from the policy, scores
them with the reward model, and moves the policy's LoRA adapter.

The policy is a LoRA adapter: an adapter from-stage is loaded `is_trainable=True` and continued
(without that flag training silently changes nothing, TRL issue 6700), TRL keeping a frozen copy
as the KL reference; a full-checkpoint from-stage gets a fresh LoRA, the reference being the
checkpoint itself (adapter disabled). Prompts come from the store's logged chat prompts or a
JSON-lines file; prompts too long for `prompt + max_completion_length` to fit the context are left
out (TRL does not truncate). A tenth of the prompts (when there are ≥ 10) is held out, and the
mean reward of sampled answers on them is measured before and after the round.

Saved beside the adapter (`{data_dir}/rounds/<name>`): `training_log.csv` (per step: mean reward,
its std, KL, answer length), `training_curves.png` (mean reward and KL per step),
`stagechat_round.json` (settings, figures, sample answers). The stage is registered and, with
`--server`, served without a restart: the lifecycle every round shares (`models.rounds`).
This module knows TRL's RL trainer; it knows nothing about HTTP serving or SQL.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.rounds import Round, RoundError
from models.training_args import cpu_training_args

log = logging.getLogger(__name__)

HOLDOUT = 0.1


@dataclass(frozen=True)
class RLPlan:
    steps: int = 40
    kl_coef: float = 0.05  # RLOO's beta: the KL penalty's weight in the reward
    num_generations: int = 4  # answers sampled per prompt (RLOO's K; the baseline is the other K-1)
    batch_size: int = 8  # answers per step: batch_size / num_generations prompts
    lr: float = 5e-4
    max_completion_length: int = 48
    temperature: float = 1.0
    rank: int = 16  # a fresh LoRA only; a continued adapter keeps its own rank
    eval_samples: int = 4  # sampled answers per held-out prompt, before and after
    seed: int = 0


@dataclass
class RLResult:
    name: str
    adapter_dir: Path
    prompts: int
    held_out_prompts: int
    steps: int
    train_seconds: float
    reward_before: float
    reward_after: float
    final_kl: float | None
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    reloaded: dict[str, Any] | None = None


# -- prompts -------------------------------------------------------------------------------------


def load_prompts(database_url: str, prompts_file: Path | None) -> list[list[dict[str, str]]]:
    """Chat prompts (message lists): one per line of `prompts_file` (a JSON list of messages, an object
    with "prompt" or "messages", or a plain string as one user turn), else the store's logged prompts."""
    if prompts_file is not None:
        prompts = []
        for n, line in enumerate(Path(prompts_file).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RoundError(f"{prompts_file}:{n}: not JSON ({exc})") from None
            if isinstance(item, dict):
                item = item.get("prompt") or item.get("messages")
            if isinstance(item, str):
                item = [{"role": "user", "content": item}]
            if not (isinstance(item, list) and item and all(isinstance(m, dict) and "role" in m for m in item)):
                raise RoundError(f'{prompts_file}:{n}: expected a list of messages, {{"prompt": [...]}} or a string')
            prompts.append(item)
        return prompts
    from server.store import Store

    store = Store(database_url)
    try:
        return [
            [{"role": m["role"], "content": str(m.get("content") or "")} for m in p]
            for p in store.iter_logged_prompts()
        ]
    finally:
        store.close()


def fitting(tokenizer, prompts: list[list[dict[str, str]]], context: int, answer_tokens: int) -> list:
    """The prompts whose templated tokens plus `answer_tokens` fit in `context`."""
    keep = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=True)
        if len(ids["input_ids"]) + answer_tokens <= context:
            keep.append(prompt)
    return keep


# -- measuring -----------------------------------------------------------------------------------


def sample_rewards(
    policy, tokenizer, reward_model, reward_tokenizer, prompts, plan: RLPlan, seed: int
) -> tuple[float, list[dict[str, Any]]]:
    """Mean reward of `eval_samples` sampled answers per prompt, and the answers with their scores."""
    import torch

    torch.manual_seed(seed)
    policy.eval()
    samples, scores = [], []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
            out = policy.generate(
                input_ids=ids["input_ids"],
                attention_mask=ids["attention_mask"],
                do_sample=True,
                temperature=plan.temperature,
                max_new_tokens=plan.max_completion_length,
                num_return_sequences=plan.eval_samples,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row in out[:, ids["input_ids"].shape[1] :]:
                answer = tokenizer.decode(row, skip_special_tokens=True)
                scored = reward_tokenizer.apply_chat_template(
                    prompt + [{"role": "assistant", "content": answer}],
                    tokenize=True,
                    return_dict=True,
                    return_tensors="pt",
                )
                score = reward_model(input_ids=scored["input_ids"]).logits[0, 0].item()
                scores.append(score)
                samples.append({"prompt": prompt[-1]["content"], "answer": answer, "reward": round(score, 4)})
    return (sum(scores) / len(scores) if scores else float("nan")), samples


# -- training ------------------------------------------------------------------------------------


def train_policy(
    checkpoint: str,
    start_adapter: str | None,
    reward_model_dir: str,
    train_prompts: list,
    held_out: list,
    plan: RLPlan,
    out_dir: Path,
) -> dict[str, Any]:
    """Run RLOO; save the adapter to `out_dir`; return the figures (log rows, rewards before/after)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RLOOConfig, RLOOTrainer

    from models.lora import load_tokenizer, save_adapter, trainable_policy

    torch.manual_seed(plan.seed)
    tokenizer = load_tokenizer(checkpoint)
    reward_tokenizer = load_tokenizer(reward_model_dir)
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, dtype=torch.float32).eval()
    model, peft_config = trainable_policy(checkpoint, start_adapter, plan.rank)

    before, before_samples = sample_rewards(
        model, tokenizer, reward_model, reward_tokenizer, held_out, plan, plan.seed + 1
    )
    with tempfile.TemporaryDirectory() as scratch:
        args = RLOOConfig(
            **cpu_training_args(
                scratch,
                plan,
                steps=plan.steps,
                scheduler="constant",
                warmup_steps=0,
                logging_steps=1,
                progress_bar=True,
            ),
            num_generations=plan.num_generations,
            max_completion_length=plan.max_completion_length,
            temperature=plan.temperature,
            beta=plan.kl_coef,
        )
        trainer = RLOOTrainer(
            model=model,
            reward_funcs=reward_model,
            args=args,
            train_dataset=Dataset.from_list([{"prompt": p} for p in train_prompts]),
            processing_class=tokenizer,
            reward_processing_classes=reward_tokenizer,
            peft_config=peft_config,
        )
        trainer.train()
        history = trainer.state.log_history
        policy = trainer.model
    rows = [
        {
            "step": h["step"],
            "reward": h.get("reward"),
            "reward_std": h.get("reward_std"),
            "kl": h.get("kl"),
            "completion_length": h.get("completions/mean_length"),
        }
        for h in history
        if "reward" in h
    ]
    after, after_samples = sample_rewards(
        policy, tokenizer, reward_model, reward_tokenizer, held_out, plan, plan.seed + 1
    )
    save_adapter(policy, tokenizer, out_dir)
    return {
        "rows": rows,
        "reward_before": before,
        "reward_after": after,
        "samples_before": before_samples[:8],
        "samples_after": after_samples[:8],
    }


def save_curves(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """`training_log.csv` and `training_curves.png` (mean reward and KL per step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with (out_dir / "training_log.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "reward", "reward_std", "kl", "completion_length"])
        writer.writeheader()
        writer.writerows(rows)
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    top.plot(steps, [r["reward"] for r in rows], marker=".")
    top.set_ylabel("mean reward")
    bottom.plot(steps, [r["kl"] if r["kl"] is not None else float("nan") for r in rows], marker=".", color="tab:red")
    bottom.set_ylabel("KL to start")
    bottom.set_xlabel("step")
    fig.suptitle("RLOO round")
    fig.tight_layout()
    fig.savefig(out_dir / "training_curves.png", dpi=100)
    plt.close(fig)


# -- the round -----------------------------------------------------------------------------------


def train_rl_round(
    *,
    config: Path,
    from_stage: str,
    name: str,
    reward_model: str | None,
    database_url: str,
    data_dir: Path,
    plan: RLPlan | None = None,
    prompts_file: Path | None = None,
    server: str | None = None,
    admin_key: str | None = None,
) -> RLResult:
    """Run one RLOO round (see the module docstring); raises `RoundError` / `RegistryError`, changing nothing."""
    from transformers import AutoConfig

    from models.lora import load_tokenizer

    plan = plan or RLPlan()
    round_ = Round.open(config, data_dir, from_stage, name)
    registry = round_.registry
    reward_model = reward_model or registry.stages[from_stage].reward_model
    if reward_model is None:
        raise RoundError("--method rloo needs --reward-model (or a `reward_model:` on the from-stage)")
    if reward_model not in registry.reward_models:
        raise RoundError(
            f"--reward-model '{reward_model}' is not under `reward_models:` in {config} "
            f"({', '.join(registry.reward_models) or 'none'})"
        )
    if not 0 <= plan.kl_coef <= 1:
        raise RoundError(f"--kl-coef {plan.kl_coef}: use a value in [0, 1] (InstructGPT-like: 0.02–0.05)")
    if plan.steps < 1:
        raise RoundError("--steps must be at least 1")
    rm_dir = registry.reward_models[reward_model].model
    checkpoint = round_.checkpoint

    tokenizer = load_tokenizer(checkpoint)
    context = min(
        getattr(AutoConfig.from_pretrained(p), "max_position_embeddings", 10**9) for p in (checkpoint, rm_dir)
    )
    prompts = load_prompts(database_url, prompts_file)
    usable = fitting(tokenizer, prompts, context, plan.max_completion_length + 1)
    prompts_per_step = plan.batch_size // plan.num_generations
    if len(usable) < max(2, prompts_per_step):
        source = prompts_file or "the store's logged chat prompts"
        raise RoundError(
            f"only {len(usable)} usable prompts in {source} ({len(prompts) - len(usable)} too long for "
            f"{plan.max_completion_length} answer tokens in a {context}-token context); need at least "
            f"{max(2, prompts_per_step)}"
        )
    shuffled = usable[:]
    random.Random(plan.seed).shuffle(shuffled)
    n_held = max(1, round(HOLDOUT * len(shuffled))) if len(shuffled) >= 10 else 0
    held_out, train = shuffled[:n_held], shuffled[n_held:]
    held_out = held_out or train  # too few prompts to hold any out: measure on the training prompts

    def work(d: Path) -> dict[str, Any]:
        figures = train_policy(checkpoint, round_.start_adapter, rm_dir, train, held_out, plan, d)
        save_curves(figures["rows"], d)
        return figures

    def meta(figures: dict[str, Any], seconds: float) -> dict[str, Any]:
        return {
            "name": name,
            "from_stage": from_stage,
            "method": "rloo",
            "reward_model": reward_model,
            "prompts": len(train),
            "held_out_prompts": n_held,
            "steps": plan.steps,
            "train_seconds": round(seconds, 1),
            "reward_before": figures["reward_before"],
            "reward_after": figures["reward_after"],
            "final_kl": final_kl(figures["rows"]),
            "plan": asdict(plan),
            "samples_before": figures["samples_before"],
            "samples_after": figures["samples_after"],
        }

    done = round_.run(
        work,
        meta,
        server=server,
        admin_key=admin_key,
        description=f"RLHF round: RLOO against reward model {reward_model} (KL {plan.kl_coef}), "
        f"continuing {from_stage}",
    )
    figures = done.result
    log.info("stage %s: RLOO, %d steps", name, plan.steps)
    return RLResult(
        name,
        round_.out_dir,
        len(train),
        n_held,
        plan.steps,
        done.seconds,
        figures["reward_before"],
        figures["reward_after"],
        final_kl(figures["rows"]),
        figures["rows"],
        done.reloaded,
    )


def final_kl(rows: list[dict[str, Any]]) -> float | None:
    """The last logged KL to the starting policy, if any step logged one."""
    return next((r["kl"] for r in reversed(rows) if r.get("kl") is not None), None)
