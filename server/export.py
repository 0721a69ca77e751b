"""Ratings and preferences → TRL's conversational datasets (KTO, DPO, SFT).

What it knows: TRL's dataset formats, and how ratings become training examples:

- An answer's verdict is its net rating (ups − downs over all raters): > 0 good, < 0 bad, 0 unsure
  (left out). Answers with the same prompt and the same text count as one.
- **kto** (unpaired preference): `{"prompt": [messages], "completion": [assistant], "label": bool}`,
  one per good or bad answer.
- **dpo** (preference, explicit prompt): `{"prompt", "chosen": [assistant], "rejected": [assistant]}`
  from A/B preferences with a winner (`tie` and `both_bad` give no pair) and from every (good, bad)
  pair of answers to the same prompt.
- **sft** (conversational language modelling): `{"messages": [...prompt, assistant]}` per good answer.

What it does not know: SQL (it reads `Store.iter_rated_answers` / `iter_preferred_pairs`), HTTP,
or training. Only chat answers are exported; completions-API answers have no messages.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

from server.store import PreferredPair, RatedAnswer, Store

Format = Literal["kto", "dpo", "sft"]
FORMATS: tuple[str, ...] = ("kto", "dpo", "sft")

Message = dict[str, str]


def _message(m: dict[str, Any]) -> Message:
    """{role, content} with text content: one schema for every row, which Arrow (datasets) needs."""
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return {"role": str(m["role"]), "content": "" if content is None else str(content)}


def _prompt(messages: list[dict[str, Any]]) -> list[Message]:
    return [_message(m) for m in messages]


def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def verdicts(answers: Iterable[RatedAnswer]) -> Iterator[tuple[list[Message], list[str], list[str]]]:
    """Per prompt: (prompt, good answer texts, bad answer texts), each text once.

    `answers` must come grouped by prompt_hash, as `Store.iter_rated_answers` yields them.
    """
    for _, group in groupby(answers, key=lambda a: a.prompt_hash):
        scores: dict[str, int] = {}  # answer text -> net rating
        prompt: list[dict[str, Any]] | None = None
        for answer in group:
            prompt = prompt or answer.prompt
            scores[answer.completion] = scores.get(answer.completion, 0) + (1 if answer.label else -1)
        assert prompt is not None
        good = [text for text, score in scores.items() if score > 0]
        bad = [text for text, score in scores.items() if score < 0]
        if good or bad:
            yield _prompt(prompt), good, bad


def kto_examples(answers: Iterable[RatedAnswer]) -> Iterator[dict[str, Any]]:
    for prompt, good, bad in verdicts(answers):
        for text in good:
            yield {"prompt": prompt, "completion": _assistant(text), "label": True}
        for text in bad:
            yield {"prompt": prompt, "completion": _assistant(text), "label": False}


def sft_examples(answers: Iterable[RatedAnswer]) -> Iterator[dict[str, Any]]:
    for prompt, good, _ in verdicts(answers):
        for text in good:
            yield {"messages": prompt + _assistant(text)}


def dpo_examples(pairs: Iterable[PreferredPair], answers: Iterable[RatedAnswer]) -> Iterator[dict[str, Any]]:
    """Preference pairs first, then pairs built from up/down ratings; each (prompt, chosen, rejected) once."""
    seen: set[bytes] = set()

    def once(prompt: list[Message], chosen: str, rejected: str) -> Iterator[dict[str, Any]]:
        if chosen == rejected:
            return
        key = hashlib.sha256(json.dumps([prompt, chosen, rejected]).encode()).digest()
        if key not in seen:
            seen.add(key)
            yield {"prompt": prompt, "chosen": _assistant(chosen), "rejected": _assistant(rejected)}

    for pair in pairs:
        yield from once(_prompt(pair.prompt), pair.chosen, pair.rejected)
    for prompt, good, bad in verdicts(answers):
        for chosen in good:
            for rejected in bad:
                yield from once(prompt, chosen, rejected)


def examples(store: Store, format: str, *, stage: str | None = None) -> Iterator[dict[str, Any]]:
    """The store's feedback as TRL examples of `format` ("kto", "dpo" or "sft"), streamed."""
    if format == "kto":
        return kto_examples(store.iter_rated_answers(stage=stage))
    if format == "sft":
        return sft_examples(store.iter_rated_answers(stage=stage))
    if format == "dpo":
        return dpo_examples(store.iter_preferred_pairs(stage=stage), store.iter_rated_answers(stage=stage))
    raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")


def export_to_file(store: Store, format: str, out_path: str | os.PathLike[str], *,
                   stage: str | None = None) -> int:
    """Write JSON lines to `out_path` (atomically: a reader never sees half a file); returns the count."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for example in examples(store, format, stage=stage):
            f.write(json.dumps(example, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(out)
    return count


def export_to_hf_dataset(store: Store, format: str, out_dir: str | os.PathLike[str], *,
                         stage: str | None = None) -> int:
    """Save a `datasets.Dataset` (load it with `datasets.load_from_disk`); returns the row count."""
    import datasets  # heavy; only this function needs it

    rows = list(examples(store, format, stage=stage))
    datasets.Dataset.from_list(rows).save_to_disk(str(out_dir))
    return len(rows)
