"""How a reward model orders answers to held-out questions: the comparisons the demo family's targets name.

For each real-country question of a held-out split (`heldout.eval_prompts`: single questions and
follow-ups, none in any training text), the correct polite full sentence is scored against five
answers it should beat, built from the corpus' own answer shapes: the terse answer, "I don't know"
naming the country, another country's sentence, the same sentence with a wrong fact, and a true
sentence answering another question about the same country. A comparison's figure is the share of
questions where the full sentence scores higher (a tie counts as a loss).

Scores come from transformers on the CPU, a question's six answers in one batch, with the reward
model's own chat template (what vLLM's pooling runner reproduces). This module knows the comparisons
and their target; it never trains, and it does not know the serving path.
"""

from __future__ import annotations

import random
from pathlib import Path

from models.demo.corpus import IDK, SKILLS, answer, fill, full_answer, load_countries, wrong_answer
from models.demo.heldout import eval_prompts

COMPARISONS = ("terse", "i_dont_know", "another_country", "wrong_fact", "another_question")
TARGET = 0.8  # the demo family's reward model wins each comparison on at least this share (issue 30)


def rivals(prompt, rng: random.Random, countries) -> dict[str, str]:
    """The five answers the full sentence should beat, by comparison name."""
    c, skill = prompt.country, prompt.skill
    other = rng.choice([o for o in countries if o.fact(skill) != c.fact(skill)])
    return {
        "terse": answer("terse", c, skill, rng),
        "i_dont_know": fill(IDK, c),
        "another_country": full_answer(other, skill),
        "wrong_fact": wrong_answer(c, skill, other),
        "another_question": full_answer(c, rng.choice([s for s in SKILLS if s != skill])),
    }


def score_replies(model, tokenizer, messages: list[dict], replies: list[str]) -> list[float]:
    """The reward model's score of each reply to `messages`, in one right-padded batch (the classifier
    reads each row's last non-pad token, so padding changes no score)."""
    import torch

    texts = [
        tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": r}], tokenize=False) for r in replies
    ]
    batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits[:, 0].tolist()


def reward_model_comparisons(rm_dir: Path, split: str = "test", every: int = 1, seed: int = 0) -> dict[str, float]:
    """Per comparison, the share of `split`'s real-country questions (every `every`-th) where `rm_dir`
    scores the full sentence above the rival; `questions` says how many were asked."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    countries = load_countries()
    rng = random.Random(seed)
    asked = [p for p in eval_prompts(split=split) if p.kind in ("fact", "followup") and p.country.real][::every]
    wins = dict.fromkeys(COMPARISONS, 0)
    for prompt in asked:
        named = rivals(prompt, rng, countries)
        full = full_answer(prompt.country, prompt.skill)
        best, *others = score_replies(model, tokenizer, prompt.message_list, [full, *named.values()])
        for name, other in zip(named, others, strict=True):
            wins[name] += best > other
    return {**{name: round(n / len(asked), 4) for name, n in wins.items()}, "questions": len(asked)}


def registry_comparisons(config: Path, split: str = "test") -> dict[str, dict[str, float]]:
    """`reward_model_comparisons` for each reward model of the registry file `config` kept in a local folder."""
    from server.registry import load_registry

    registry = load_registry(config)
    return {
        name: reward_model_comparisons(Path(spec.model), split)
        for name, spec in registry.reward_models.items()
        if Path(spec.model).is_dir()
    }


def missed_targets(comparisons: dict[str, dict[str, float]]) -> list[str]:
    """The comparisons a reward model wins on fewer than TARGET of the questions (the demo family's rule)."""
    return [
        f"{name}.{c} = {figures[c]} < {TARGET}"
        for name, figures in comparisons.items()
        for c in COMPARISONS
        if figures[c] < TARGET
    ]
