"""How a reward model orders answers to held-out questions: the comparisons the demo family's targets name.

For each real-country question of a held-out split (`heldout.eval_prompts`: single questions and
follow-ups, none in any training text), the correct polite full sentence is scored against five
answers it should beat, built from the corpus' own answer shapes: the terse answer, "I don't know"
naming the country, another country's sentence, the same sentence with a wrong fact, and a true
sentence answering another question about the same country. A comparison's figure is the share of
questions where the full sentence scores higher (a tie counts as a loss).

Scores come from transformers on the CPU, batched and tokenised as the build scores its held-out
pairs (`models.reward_model.pairwise_accuracy`). This module knows the comparisons and their target;
it never trains, and it does not know the serving path.
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


def reward_model_comparisons(rm_dir: Path, split: str = "test", every: int = 1, seed: int = 0) -> dict[str, float]:
    """Per comparison, the share of `split`'s real-country questions (every `every`-th) where `rm_dir`
    scores the full sentence above the rival; `questions` says how many were asked. Scored as the
    build scores `rm`'s held-out pairs (`reward_model.pairwise_accuracy`)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from models.reward_model import pairwise_accuracy

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32)
    countries = load_countries()
    rng = random.Random(seed)
    # Fact and follow-up questions are about real countries; unknown ones are the "unknown" kind.
    asked = [p for p in eval_prompts(split=split) if p.kind in ("fact", "followup")][::every]
    pairs: dict[str, list[dict]] = {name: [] for name in COMPARISONS}
    for prompt in asked:
        chosen = [{"role": "assistant", "content": full_answer(prompt.country, prompt.skill)}]
        for name, rival in rivals(prompt, rng, countries).items():
            rejected = [{"role": "assistant", "content": rival}]
            pairs[name].append({"prompt": prompt.message_list, "chosen": chosen, "rejected": rejected})
    limit = tokenizer.model_max_length
    shares = {name: round(pairwise_accuracy(model, tokenizer, named, limit)[0], 4) for name, named in pairs.items()}
    return {**shares, "questions": len(asked)}


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
