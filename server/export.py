"""Ratings, preferences, rankings and corrections → TRL's conversational datasets (KTO, DPO, SFT),
as JSON lines or as a Hugging Face `DatasetDict` with a dataset card.

What it knows: TRL's dataset formats, and how feedback becomes training examples:

- An answer's verdict is its net rating (ups − downs over all raters): > 0 good, < 0 bad, 0 unsure
  (left out). Answers with the same prompt and the same text count as one.
- A **correction** is what an answer should have been: it is a good answer, and it beats the
  original.
- **kto** (unpaired preference): `{"prompt": [messages], "completion": [assistant], "label": bool}`,
  one per good or bad answer, and a `True` row per correction.
- **dpo** (preference, explicit prompt): `{"prompt", "chosen": [assistant], "rejected": [assistant]}`
  from A/B preferences with a winner (`tie` and `both_bad` give no pair), from every ordered pair of
  every ranking (each answer of a better group over each of every worse group), from corrections
  (corrected over original), and from every (good, bad) pair of rated answers to the same prompt.
- **sft** (conversational language modelling): `{"messages": [...prompt, assistant]}` per good
  answer — the corrected text where the answer was corrected — and per correction.

Every row's prompt is the exact conversation prefix the answer was generated for (the generation
log's messages). Exact duplicate rows are written once.

**Raters left out**: with a gold-accuracy threshold (`RaterFilter.read`, the leaderboard's
`min_gold_accuracy`), everything a rater whose accuracy on the arena's gold questions is below it
gave is left out before verdicts are counted; raters who answered no gold question stay in. The
dataset card, the route's header and the CLI name who was left out.

What it does not know: SQL (it reads the store's `iter_*` methods), HTTP, or training. Only chat
answers are exported; completions-API answers have no messages.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from server.store.records import CorrectedAnswer, PreferredPair, RatedAnswer

if TYPE_CHECKING:
    from server.store import Store

Format = Literal["kto", "dpo", "sft"]
FORMATS: tuple[str, ...] = ("kto", "dpo", "sft")
# Where a row came from, as the dataset card counts them.
SOURCES: dict[str, str] = {
    "thumbs": "thumbs up/down",
    "preference": "A/B preferences",
    "ranking": "rankings",
    "correction": "corrections",
}
TEST_FRACTION = 0.1

Message = dict[str, str]


def _message(m: dict[str, Any]) -> Message:
    """{role, content} with text content: one schema for every row, which Arrow (datasets) needs."""
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return {"role": str(m["role"]), "content": "" if content is None else str(content)}


def prompt_messages(messages: list[dict[str, Any]]) -> list[Message]:
    """A logged prompt as dataset rows hold it: {role, content} messages with text content."""
    return [_message(m) for m in messages]


def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


@dataclass(frozen=True)
class RaterFilter:
    """The raters an export leaves out: those below `min_gold_accuracy` on gold questions, read once."""

    min_gold_accuracy: float | None = None
    excluded: tuple[str, ...] = ()

    @classmethod
    def read(cls, store: Store, min_gold_accuracy: float | None) -> RaterFilter:
        if min_gold_accuracy is not None and not 0 <= min_gold_accuracy <= 1:
            raise ValueError(f"the gold-accuracy threshold must be between 0 and 1; got {min_gold_accuracy}")
        return cls(min_gold_accuracy, tuple(store.gold_excluded(min_gold_accuracy)))

    def describe(self) -> str:
        """One line for people: who was left out and why."""
        if self.min_gold_accuracy is None:
            return "no rater left out (no gold-accuracy threshold)"
        who = f": {', '.join(self.excluded)}" if self.excluded else ""
        return f"{len(self.excluded)} rater(s) below gold accuracy {self.min_gold_accuracy:g} left out{who}"


ALL_RATERS = RaterFilter()


@dataclass
class Row:
    """One example with where it came from (for the dataset card); `example` is what TRL reads."""

    example: dict[str, Any]
    source: str
    stages: set[str] = field(default_factory=set)
    times: list[datetime] = field(default_factory=list)


@dataclass
class _Verdict:
    score: int = 0
    stages: set[str] = field(default_factory=set)
    times: list[datetime] = field(default_factory=list)


def _verdicts(answers: Iterable[RatedAnswer]) -> Iterator[tuple[str, list[Message], dict[str, _Verdict]]]:
    """Per prompt: (prompt_hash, prompt, {answer text: net rating with its stages and times})."""
    for prompt_hash, group in groupby(answers, key=lambda a: a.prompt_hash):
        texts: dict[str, _Verdict] = {}
        prompt: list[dict[str, Any]] | None = None
        for answer in group:
            prompt = prompt or answer.prompt
            v = texts.setdefault(answer.completion, _Verdict())
            v.score += 1 if answer.label else -1
            v.stages.add(answer.stage)
            if answer.rated_at is not None:
                v.times.append(answer.rated_at)
        assert prompt is not None
        yield prompt_hash, prompt_messages(prompt), texts


def verdicts(answers: Iterable[RatedAnswer]) -> Iterator[tuple[list[Message], list[str], list[str]]]:
    """Per prompt: (prompt, good answer texts, bad answer texts), each text once.

    `answers` must come grouped by prompt_hash, as `Store.iter_rated_answers` yields them.
    """
    for _, prompt, texts in _verdicts(answers):
        good = [t for t, v in texts.items() if v.score > 0]
        bad = [t for t, v in texts.items() if v.score < 0]
        if good or bad:
            yield prompt, good, bad


def _corrected(corrections: Iterable[CorrectedAnswer]) -> dict[tuple[str, str], list[CorrectedAnswer]]:
    """(prompt_hash, original text) -> its corrections."""
    by_original: dict[tuple[str, str], list[CorrectedAnswer]] = {}
    for c in corrections:
        by_original.setdefault((c.prompt_hash, c.original), []).append(c)
    return by_original


def _correction_row(c: CorrectedAnswer, example: dict[str, Any]) -> Row:
    return Row(example, "correction", {c.stage}, [c.rated_at] if c.rated_at else [])


def kto_rows(answers: Iterable[RatedAnswer], corrections: Iterable[CorrectedAnswer] = ()) -> Iterator[Row]:
    for _, prompt, texts in _verdicts(answers):
        for text, v in texts.items():
            if v.score:
                yield Row(
                    {"prompt": prompt, "completion": _assistant(text), "label": v.score > 0},
                    "thumbs",
                    v.stages,
                    v.times,
                )
    for c in corrections:
        yield _correction_row(
            c, {"prompt": prompt_messages(c.prompt), "completion": _assistant(c.corrected), "label": True}
        )


def sft_rows(answers: Iterable[RatedAnswer], corrections: Iterable[CorrectedAnswer] = ()) -> Iterator[Row]:
    corrections = list(corrections)
    corrected = _corrected(corrections)
    for prompt_hash, prompt, texts in _verdicts(answers):
        for text, v in texts.items():
            if v.score > 0 and (prompt_hash, text) not in corrected:  # a corrected answer: its correction instead
                yield Row({"messages": prompt + _assistant(text)}, "thumbs", v.stages, v.times)
    for c in corrections:
        yield _correction_row(c, {"messages": prompt_messages(c.prompt) + _assistant(c.corrected)})


def dpo_rows(
    pairs: Iterable[PreferredPair], answers: Iterable[RatedAnswer], corrections: Iterable[CorrectedAnswer] = ()
) -> Iterator[Row]:
    """Preference and ranking pairs, then corrected-over-original, then pairs from up/down ratings."""
    for pair in pairs:
        if pair.chosen != pair.rejected:
            yield Row(
                {
                    "prompt": prompt_messages(pair.prompt),
                    "chosen": _assistant(pair.chosen),
                    "rejected": _assistant(pair.rejected),
                },
                pair.source,
                {s for s in pair.stages if s},
                [pair.rated_at] if pair.rated_at else [],
            )
    for c in corrections:
        yield _correction_row(
            c,
            {
                "prompt": prompt_messages(c.prompt),
                "chosen": _assistant(c.corrected),
                "rejected": _assistant(c.original),
            },
        )
    for _, prompt, texts in _verdicts(answers):
        for chosen, good in texts.items():
            for rejected, bad in texts.items():
                if good.score > 0 and bad.score < 0:
                    yield Row(
                        {"prompt": prompt, "chosen": _assistant(chosen), "rejected": _assistant(rejected)},
                        "thumbs",
                        good.stages | bad.stages,
                        good.times + bad.times,
                    )


def unique(rows: Iterable[Row]) -> Iterator[Row]:
    """Each example once (exact duplicates dropped; the first one's provenance is kept)."""
    seen: set[bytes] = set()
    for row in rows:
        key = hashlib.sha256(json.dumps(row.example, sort_keys=True).encode()).digest()
        if key not in seen:
            seen.add(key)
            yield row


def rows(store: Store, format: str, *, stage: str | None = None, raters: RaterFilter = ALL_RATERS) -> Iterator[Row]:
    """The store's feedback as TRL rows of `format`, each once, with provenance; streamed. What the
    raters `raters` leaves out gave is not read."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    left_out = set(raters.excluded)
    answers = store.iter_rated_answers(stage=stage, exclude_raters=left_out)
    corrections = store.iter_corrections(stage=stage, exclude_raters=left_out)
    if format == "kto":
        return unique(kto_rows(answers, corrections))
    if format == "sft":
        return unique(sft_rows(answers, corrections))

    def pairs() -> Iterator[PreferredPair]:
        yield from store.iter_preferred_pairs(stage=stage, exclude_raters=left_out)
        yield from store.iter_ranked_pairs(stage=stage, exclude_raters=left_out)

    return unique(dpo_rows(pairs(), answers, corrections))


def examples(
    store: Store, format: str, *, stage: str | None = None, raters: RaterFilter = ALL_RATERS
) -> Iterator[dict[str, Any]]:
    """The store's feedback as TRL examples of `format` ("kto", "dpo" or "sft"), streamed."""
    return (row.example for row in rows(store, format, stage=stage, raters=raters))


def export_to_file(
    store: Store,
    format: str,
    out_path: str | os.PathLike[str],
    *,
    stage: str | None = None,
    raters: RaterFilter = ALL_RATERS,
) -> int:
    """Write JSON lines to `out_path` (atomically: a reader never sees half a file); returns the count."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for example in examples(store, format, stage=stage, raters=raters):
                f.write(json.dumps(example, ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: no half-written file left behind
        raise
    return count


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets: a train/test split by prompt, and a dataset card


def _prompt_of(example: dict[str, Any]) -> list[Message]:
    return example["prompt"] if "prompt" in example else example["messages"][:-1]


def in_test_split(prompt: list[Message], fraction: float) -> bool:
    """Whether a prompt's rows go to the test split: a hash of the prompt, so a prompt never straddles
    the split and the same prompt lands on the same side in every export."""
    digest = hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_by_prompt(all_rows: list[Row], fraction: float) -> tuple[list[int], list[int]]:
    """(train indices, test indices). With two or more prompts neither side is left empty."""
    prompts = [json.dumps(_prompt_of(r.example), sort_keys=True) for r in all_rows]
    distinct = sorted(set(prompts))
    test = {p for p in distinct if in_test_split(json.loads(p), fraction)}
    if len(distinct) >= 2 and fraction > 0:
        if not test:  # the prompt nearest the test side goes there
            test = {min(distinct, key=lambda p: hashlib.sha256(p.encode()).digest())}
        elif test == set(distinct):
            test.discard(max(distinct, key=lambda p: hashlib.sha256(p.encode()).digest()))
    train_idx = [i for i, p in enumerate(prompts) if p not in test]
    test_idx = [i for i, p in enumerate(prompts) if p in test]
    return train_idx, test_idx


FORMAT_NOTES = {
    "kto": "TRL's unpaired preference format: `prompt` (messages), `completion` (one assistant message), "
    "`label` (true: desirable). Train with `trl.KTOTrainer`.",
    "dpo": "TRL's preference format with an explicit prompt: `prompt` (messages), `chosen` and `rejected` "
    "(one assistant message each). Train with `trl.DPOTrainer` or `trl.RewardTrainer`.",
    "sft": "TRL's conversational language-modelling format: `messages` (the prompt, then the assistant "
    "answer). Train with `trl.SFTTrainer`.",
}


def dataset_card(
    format: str,
    all_rows: list[Row],
    splits: dict[str, int],
    *,
    stage: str | None = None,
    raters: RaterFilter = ALL_RATERS,
) -> str:
    """README.md for the dataset: counts per source, stages, time range, format, splits."""
    sources = Counter(r.source for r in all_rows)
    stages = Counter(s for r in all_rows for s in r.stages)
    times = [t for r in all_rows for t in r.times]
    span = (
        f"{min(times).isoformat(timespec='seconds')} – {max(times).isoformat(timespec='seconds')} (UTC)"
        if times
        else "no timestamps"
    )
    lines = [
        "---",
        "configs:",
        "- config_name: default",
        "  data_files:",
        *[f"  - split: {name}\n    path: data/{name}-*" for name in splits],
        "tags:",
        "- trl",
        f"- {format}",
        "- stagechat",
        "---",
        "",
        f"# stagechat feedback — {format.upper()}",
        "",
        f"Exported by `stagechat feedback export --format {format}` from the ratings collected by a stagechat "
        "server" + (f" (stage `{stage}` only)" if stage else "") + ".",
        "",
        "## Format",
        "",
        FORMAT_NOTES[format],
        "",
        "Each prompt is the exact conversation prefix the answer was generated for, as the server logged it. "
        "Exact duplicate rows were removed; the train/test split is by prompt (no prompt is in both).",
        "",
        "## Splits",
        "",
        "| split | rows |",
        "|---|---|",
        *[f"| {n} | {c} |" for n, c in splits.items()],
        "",
        "## Rows per source",
        "",
        "| source | rows |",
        "|---|---|",
        *[f"| {label} | {sources.get(key, 0)} |" for key, label in SOURCES.items()],
        "",
        "## Stages",
        "",
        "| stage | rows involving it |",
        "|---|---|",
        *[f"| {s} | {c} |" for s, c in sorted(stages.items())],
        "",
        "## Time range",
        "",
        f"Feedback given {span}.",
        "",
        "## Raters left out",
        "",
        (
            "None: no gold-accuracy threshold was set."
            if raters.min_gold_accuracy is None
            else f"Raters whose accuracy on the arena's gold questions is below {raters.min_gold_accuracy:g} "
            f"were left out: {len(raters.excluded)}"
            + (" (" + ", ".join(f"`{r}`" for r in raters.excluded) + ")." if raters.excluded else ".")
        ),
        "",
    ]
    return "\n".join(lines)


def build_dataset_dict(
    store: Store,
    format: str,
    *,
    stage: str | None = None,
    test_fraction: float = TEST_FRACTION,
    raters: RaterFilter = ALL_RATERS,
) -> tuple[Any, str]:
    """(`datasets.DatasetDict` with train and test, dataset card text)."""
    import datasets  # heavy; only the dataset export needs it

    all_rows = list(rows(store, format, stage=stage, raters=raters))
    full = datasets.Dataset.from_list([r.example for r in all_rows])
    train_idx, test_idx = split_by_prompt(all_rows, test_fraction)
    dd = datasets.DatasetDict(train=full.select(train_idx), test=full.select(test_idx))
    card = dataset_card(format, all_rows, {name: len(ds) for name, ds in dd.items()}, stage=stage, raters=raters)
    return dd, card


def export_to_hf_dataset(
    store: Store,
    format: str,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    stage: str | None = None,
    test_fraction: float = TEST_FRACTION,
    push_to_hub: str | None = None,
    private: bool = True,
    token: str | None = None,
    raters: RaterFilter = ALL_RATERS,
) -> int:
    """Save a `DatasetDict` (train/test) with its card to `out_dir` (`datasets.load_from_disk` reads
    it; the card is `README.md` beside it) and/or push both to the Hub repo `push_to_hub`.
    Returns the row count."""
    dd, card = build_dataset_dict(store, format, stage=stage, test_fraction=test_fraction, raters=raters)
    if out_dir is not None:
        out = Path(out_dir)
        dd.save_to_disk(str(out))
        (out / "README.md").write_text(card, encoding="utf-8")
    if push_to_hub:
        from huggingface_hub import DatasetCard

        dd.push_to_hub(push_to_hub, private=private, token=token)
        DatasetCard(card).push_to_hub(push_to_hub, repo_type="dataset", token=token)
    return sum(len(ds) for ds in dd.values())
