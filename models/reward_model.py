"""`stagechat reward-model`: train a reward model on the store's comparisons, register it, serve it.

InstructGPT's recipe: people compare answers to one prompt; a reward model learns to give the
preferred answer the higher score (a Bradley–Terry loss on score differences). Comparisons come from
three places in the store, each read as (prompt, chosen, rejected) pairs:

- A/B preferences with a winner (`POST /v1/preferences`);
- rankings of K answers to one conversation (`POST /v1/rankings`): all K·(K−1)/2 ordered pairs
  between different groups (ties give no pair), as InstructGPT did;
- an up-rated and a down-rated answer to the same prompt (net ratings, `server.export.verdicts`).

Steps: collect the pairs → hold out at least 10% of them, split by prompt (no prompt is in both
parts) → TRL's `RewardTrainer` on `AutoModelForSequenceClassification(num_labels=1)` over the
from-stage's checkpoint (an adapter stage is merged into its checkpoint first; all weights train,
which suits the small models this project trains on a CPU) → held-out pairwise accuracy (the share
of held-out pairs whose chosen answer scores higher) → save to `{data_dir}/reward_models/<name>`
with `stagechat_reward_model.json` → add it under `reward_models:` in the registry file → optionally
ask a running server to reload (the lifecycle every round shares, `models.rounds`).

Anything that fails before the registry write leaves the registry and the data folder as they were.
This module knows TRL and the pair rules; it knows nothing about HTTP or SQL (the store's iterators).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.rounds import Round, RoundError
from models.training_args import cpu_training_args

log = logging.getLogger(__name__)

META_FILE = "stagechat_reward_model.json"
HOLDOUT = 0.1  # at least this share of the pairs is held out, whole prompts at a time


@dataclass(frozen=True)
class RewardPlan:
    steps: int | None = None  # None: ≈ 4 epochs over the training pairs, between 20 and 300 steps
    batch_size: int = 8
    lr: float = 1e-4
    max_length: int = 256  # pairs with a longer prompt + answer are left out (TRL drops them too)
    center_rewards: float = 0.01  # keeps scores near 0, which an RL round's KL penalty is scaled against
    seed: int = 0

    def total_steps(self, pairs: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(20, min(300, 4 * -(-pairs // self.batch_size)))


@dataclass
class RewardResult:
    name: str
    model_dir: Path
    train_pairs: int
    held_out_pairs: int
    held_out_accuracy: float
    steps: int
    train_seconds: float
    sources: dict[str, int] = field(default_factory=dict)
    reloaded: dict[str, Any] | None = None


# -- pairs ---------------------------------------------------------------------------------------


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def comparison_pairs(store) -> list[dict[str, Any]]:
    """Every (prompt, chosen, rejected) the store's comparisons give, each once, with its source."""
    from server.export import prompt_messages, verdicts

    pairs: list[dict[str, Any]] = []
    seen: set[bytes] = set()

    def add(prompt: list[dict[str, Any]], chosen: str, rejected: str, source: str) -> None:
        prompt = prompt_messages(prompt)
        key = hashlib.sha256(json.dumps([prompt, chosen, rejected]).encode()).digest()
        if chosen != rejected and key not in seen:
            seen.add(key)
            pairs.append(
                {"prompt": prompt, "chosen": _assistant(chosen), "rejected": _assistant(rejected), "source": source}
            )

    for pair in store.iter_preferred_pairs():
        add(pair.prompt, pair.chosen, pair.rejected, "preference")
    for pair in store.iter_ranked_pairs():
        add(pair.prompt, pair.chosen, pair.rejected, "ranking")
    for prompt, good, bad in verdicts(store.iter_rated_answers()):
        for chosen in good:
            for rejected in bad:
                add(prompt, chosen, rejected, "ratings")
    return pairs


def split_by_prompt(
    pairs: list[dict[str, Any]], share: float = HOLDOUT, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held_out): whole prompts go to the held-out part until it has ≥ `share` of the pairs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for pair in pairs:
        groups.setdefault(json.dumps(pair["prompt"], sort_keys=True), []).append(pair)
    if len(groups) < 2:
        raise RoundError(
            f"all {len(pairs)} pairs share one prompt; a held-out split by prompt needs pairs from at least 2 prompts"
        )
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    need = max(1, math.ceil(share * len(pairs)))
    held: list[dict[str, Any]] = []
    while len(held) < need and len(keys) > 1:
        held.extend(groups[keys.pop()])
    train = [p for k in keys for p in groups[k]]
    return train, held


# -- training ------------------------------------------------------------------------------------


def load_policy_as_classifier(checkpoint: str, adapter: str | None, scratch: Path):
    """(AutoModelForSequenceClassification with one label, tokenizer) from a checkpoint, adapter merged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    source = checkpoint
    if adapter is not None:
        from peft import PeftModel

        causal = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
        merged = PeftModel.from_pretrained(causal, adapter).merge_and_unload()
        source = str(scratch / "merged")
        merged.save_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def pair_ids(tokenizer, pair: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Token ids of prompt + chosen and prompt + rejected, exactly as TRL's RewardTrainer builds them."""

    def ids(messages):
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])

    return ids(pair["prompt"] + pair["chosen"]), ids(pair["prompt"] + pair["rejected"])


def pairwise_accuracy(model, tokenizer, pairs: list[dict[str, Any]], max_length: int) -> tuple[float, int]:
    """(share of pairs whose chosen answer scores higher, pairs judged); pairs over max_length are skipped."""
    judged = [ids for ids in (pair_ids(tokenizer, pair) for pair in pairs) if max(map(len, ids)) <= max_length]
    scores = sequence_scores(model, [sequence for ids in judged for sequence in ids], tokenizer.pad_token_id)
    right = sum(chosen > rejected for chosen, rejected in zip(scores[::2], scores[1::2]))
    return (right / len(judged) if judged else float("nan")), len(judged)


def sequence_scores(model, sequences: list[list[int]], pad_id: int, batch_size: int = 64) -> list[float]:
    """The reward model's score of each token sequence. Batched, padded on the right: attention is
    causal and the score is read at the last token that is not padding, so padding changes no score
    (the demo build's 4,395 held-out pairs: 20.6 s one at a time, 7.8 s batched)."""
    import torch

    model.eval()
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
            scores += model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    return scores


def train_reward_model(
    checkpoint: str,
    adapter: str | None,
    train: list[dict[str, Any]],
    held_out: list[dict[str, Any]],
    plan: RewardPlan,
    out_dir: Path,
) -> tuple[float, int, int]:
    """Train and save the reward model; returns (held-out accuracy, pairs judged, steps)."""
    import torch
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(plan.seed)
    steps = plan.total_steps(len(train))
    with tempfile.TemporaryDirectory() as scratch:
        model, tokenizer = load_policy_as_classifier(checkpoint, adapter, Path(scratch))
        args = RewardConfig(
            **cpu_training_args(scratch, plan, steps=steps),
            max_length=plan.max_length,
            center_rewards_coefficient=plan.center_rewards,
        )
        rows = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in train]
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
        trainer.train()
        model = trainer.model
    accuracy, judged = pairwise_accuracy(model, tokenizer, held_out, plan.max_length)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return accuracy, judged, steps


# -- the command ---------------------------------------------------------------------------------


def build_reward_model(
    *,
    config: Path,
    from_stage: str,
    name: str,
    database_url: str,
    data_dir: Path,
    min_pairs: int = 10,
    plan: RewardPlan | None = None,
    server: str | None = None,
    admin_key: str | None = None,
) -> RewardResult:
    """Train, save and register reward model `name` (see the module docstring); raises `RoundError` /
    `RegistryError`, changing nothing."""
    from server.store import Store

    plan = plan or RewardPlan()
    round_ = Round.open(config, data_dir, from_stage, name, kind="reward_model")

    store = Store(database_url)
    try:
        pairs = comparison_pairs(store)
    finally:
        store.close()
    if len(pairs) < min_pairs:
        raise RoundError(
            f"only {len(pairs)} comparison pairs in the store (preferences, rankings, up/down "
            f"answers to one prompt); --min-pairs is {min_pairs}. Collect more comparisons first."
        )
    train, held_out = split_by_prompt(pairs, seed=plan.seed)
    sources = {s: sum(p["source"] == s for p in pairs) for s in ("preference", "ranking", "ratings")}

    def meta(trained: tuple[float, int, int], seconds: float) -> dict[str, Any]:
        accuracy, judged, steps = trained
        return {
            "name": name,
            "from_stage": from_stage,
            "pairs": len(pairs),
            "sources": sources,
            "train_pairs": len(train),
            "held_out_pairs": len(held_out),
            "held_out_judged": judged,
            "held_out_accuracy": accuracy,
            "steps": steps,
            "train_seconds": round(seconds, 1),
            "plan": asdict(plan),
        }

    done = round_.run(
        lambda d: train_reward_model(round_.checkpoint, round_.start_adapter, train, held_out, plan, d),
        meta,
        meta_file=META_FILE,
        server=server,
        admin_key=admin_key,
        description=lambda trained: (
            f"reward model on {from_stage}: {len(pairs)} pairs, held-out accuracy {trained[0]:.2f}"
        ),
    )
    accuracy, _, steps = done.result
    log.info("reward model %s: %d pairs, held-out accuracy %.3f", name, len(pairs), accuracy)
    return RewardResult(
        name, round_.out_dir, len(train), len(held_out), accuracy, steps, done.seconds, sources, done.reloaded
    )
