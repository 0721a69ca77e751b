"""The sampler lab: one position's next-token distribution after each step of vLLM 0.32's sampler.

vLLM's order (`vllm/v1/sample/sampler.py`): logit bias → penalties (repetition, frequency, presence)
→ temperature → min-p → top-k → top-p → sample. Each step here reports the distribution it leaves
(renormalised over the survivors), the tokens it cut, the share of the previous step's probability
mass that survived, and where the sampled token stands.

Input: the engine's *raw* logprobs at that position (vLLM's default `logprobs_mode="raw_logprobs"`:
log-softmax of the logits before any processing; an engine-wide option, so the server keeps the
default every client expects) for a window of candidates (the top alternatives plus the sampled
token), and the token ids before it (for the penalties). What that window leaves out is the
*tail*: its raw mass is known (1 minus the window's), its tokens are not; it is modelled as that
mass spread evenly over the rest of the vocabulary, every tail token below every window token.

Exact where the window suffices: logit bias, frequency and presence penalties (additive: a
logprob is the logit shifted by a constant), temperature, min-p (a ratio to the most likely token),
top-k when k fits in the window, and top-p after it. Approximate, and said so in `notes`: a tail
that survives to a step needing the full distribution's normaliser (top-p, the final probabilities)
at a temperature other than 1; and the repetition penalty, which vLLM applies to the raw logit's
sign (divide if positive, multiply if negative), hidden by the logprob's unknown shift (applied
here to the logprob, as to a negative logit). Pure arithmetic: no engine, no HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SAMPLING_EPS = 1e-5  # vLLM's: a temperature below it is greedy
TAIL = -1  # the tail's pseudo token id


@dataclass(frozen=True)
class LabSettings:
    temperature: float = 1.0
    top_k: int = 0  # 0 or -1: off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()


@dataclass
class Item:
    token_id: int
    token: str
    logit: float  # the working value (starts as the raw logprob)
    count: int = 1  # the tail stands for `count` tokens of this logit each


@dataclass(frozen=True)
class Row:
    token_id: int
    token: str
    probability: float  # of one token (the tail: of each of its tokens)
    count: int = 1


@dataclass(frozen=True)
class Step:
    name: str
    rows: tuple[Row, ...]  # survivors, most likely first, renormalised
    cut: tuple[str, ...]  # tokens this step removed (the tail as "(N tail tokens)")
    mass_kept: float  # the share of the previous distribution's mass the survivors had
    sampled_rank: int | None  # the sampled token's rank among the survivors (1 = top); None: cut
    sampled_probability: float


@dataclass
class Lab:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tail_mass: float = 0.0  # raw probability outside the window

    def kept(self) -> set[int]:
        """Token ids that can be sampled after the last step (TAIL when tail tokens can)."""
        return {r.token_id for r in self.steps[-1].rows} if self.steps else set()

    def body(self) -> dict:
        return {
            "tail_mass": self.tail_mass,
            "notes": self.notes,
            "steps": [
                {
                    "name": s.name,
                    "mass_kept": s.mass_kept,
                    "cut": list(s.cut),
                    "sampled_rank": s.sampled_rank,
                    "sampled_probability": s.sampled_probability,
                    "tokens": [
                        {"id": r.token_id, "token": r.token, "probability": r.probability, "count": r.count}
                        for r in s.rows
                    ],
                }
                for s in self.steps
            ],
        }


def run(
    window: list[tuple[int, str, float]],
    settings: LabSettings,
    *,
    sampled_id: int,
    vocab_size: int,
    prompt_ids: list[int] = (),
    output_ids: list[int] = (),
) -> Lab:
    """The lab for one position. `window`: (token id, token, raw logprob) of the candidates the
    engine returned; `output_ids`: the answer's tokens before this position."""
    lab = Lab()
    seen: dict[int, Item] = {}
    for token_id, token, logprob in window:
        seen.setdefault(token_id, Item(token_id, token, max(logprob, -1e9)))
    items = list(seen.values())
    lab.tail_mass = max(0.0, 1.0 - sum(math.exp(i.logit) for i in items))
    tail_count = max(vocab_size - len(items), 0)
    if tail_count and lab.tail_mass > 1e-9:
        floor = min(i.logit for i in items)
        each = min(math.log(lab.tail_mass / tail_count), floor)  # below every window token
        items.append(Item(TAIL, f"({tail_count} other tokens)", each, tail_count))
    previous = _probs(items)
    lab.steps.append(_step("raw (the model)", items, [], previous, 1.0, sampled_id))

    def record(name: str, survivors: list[Item], removed: list[Item]):
        nonlocal items, previous
        before = {i.token_id: p for i, p in zip(items, previous)}  # per token, by id (the tail: TAIL)
        lost = sum(before.get(i.token_id, 0.0) * i.count for i in removed)
        probs = _probs(survivors)
        lab.steps.append(_step(name, survivors, removed, probs, 1.0 - lost, sampled_id))
        items, previous = survivors, probs

    # 1. logit bias (additive)
    bias = dict(settings.logit_bias)
    if bias:
        for i in items:
            i.logit += bias.get(i.token_id, 0.0)
        if any(t not in seen for t in bias):
            lab.notes.append("logit_bias on tokens outside the window is not shown")
        record("logit bias", items, [])
    # 2. penalties: repetition on prompt and output tokens, frequency and presence on output tokens
    counts: dict[int, int] = {}
    for t in output_ids:
        counts[t] = counts.get(t, 0) + 1
    if settings.repetition_penalty != 1.0 or settings.frequency_penalty or settings.presence_penalty:
        seen_before = set(prompt_ids) | set(counts)
        for i in items:
            if i.token_id == TAIL:
                continue
            if settings.repetition_penalty != 1.0 and i.token_id in seen_before:
                r = settings.repetition_penalty
                i.logit = i.logit / r if i.logit > 0 else i.logit * r
            n = counts.get(i.token_id, 0)
            i.logit -= settings.frequency_penalty * n + settings.presence_penalty * (n > 0)
        if settings.repetition_penalty != 1.0:
            lab.notes.append(
                "repetition_penalty is applied to logprobs: vLLM applies it to raw logits, "
                "whose sign the logprobs hide (approximate)"
            )
        if any(t not in seen for t in seen_before) and items[-1].token_id == TAIL:
            lab.notes.append("penalties on tail tokens are not shown")
        items.sort(key=lambda i: (i.token_id == TAIL, -i.logit))
        record("penalties", items, [])
    # 3. temperature (below vLLM's epsilon: greedy, the argmax only)
    t = settings.temperature
    if t < SAMPLING_EPS:
        best = max(items, key=lambda i: i.logit)
        record("greedy (temperature 0)", [best], [i for i in items if i is not best])
        return lab
    if t != 1.0:
        for i in items:
            i.logit /= t
        if items[-1].token_id == TAIL:
            lab.notes.append(f"the tail is modelled as its raw mass spread evenly (approximate at temperature {t:g})")
        record(f"temperature {t:g}", items, [])
    # 4. min-p: a ratio to the most likely token's probability (no normaliser needed)
    if settings.min_p > 0:
        top = max(i.logit for i in items)
        floor = top + math.log(settings.min_p)
        survivors = [i for i in items if i.logit >= floor]
        record(f"min-p {settings.min_p:g}", survivors, [i for i in items if i.logit < floor])
        # 5. top-k: every token at least as likely as the k-th (ties kept, as vLLM does)
    k = settings.top_k
    if k > 0:
        survivors, removed, taken = [], [], 0
        ordered = sorted(items, key=lambda i: -i.logit)
        kth = None
        for i in ordered:
            if taken < k:
                keep = min(i.count, k - taken)
                taken += keep
                if keep < i.count:  # part of the tail
                    removed.append(Item(i.token_id, f"({i.count - keep} other tokens)", i.logit, i.count - keep))
                    i = Item(i.token_id, f"({keep} other tokens)", i.logit, keep)
                survivors.append(i)
                kth = i.logit
            elif kth is not None and i.logit >= kth:
                survivors.append(i)
            else:
                removed.append(i)
        record(f"top-k {k}", survivors, removed)
        # 6. top-p: from the least likely up, drop tokens while the dropped mass stays <= 1 - p
    if settings.top_p < 1.0:
        probs = _probs(items)
        ascending = sorted(zip(items, probs), key=lambda ip: ip[0].logit)
        budget, dropped_mass = 1.0 - settings.top_p, 0.0
        survivors, removed = [], []
        for n, (i, p) in enumerate(ascending):
            last = n == len(ascending) - 1
            if last:  # vLLM keeps at least one token
                survivors.append(i)
                continue
            if i.count > 1:  # the tail: drop as many of its equal tokens as the budget allows
                drop = min(i.count, int((budget - dropped_mass) / p + 1e-9)) if p > 0 else i.count
                dropped_mass += drop * p
                if drop:
                    removed.append(Item(i.token_id, f"({drop} other tokens)", i.logit, drop))
                if drop < i.count:
                    survivors.append(Item(i.token_id, f"({i.count - drop} other tokens)", i.logit, i.count - drop))
                continue
            if dropped_mass + p <= budget + 1e-12:
                dropped_mass += p
                removed.append(i)
            else:
                survivors.append(i)
        record(f"top-p {settings.top_p:g}", sorted(survivors, key=lambda i: -i.logit), removed)
    return lab


def _probs(items: list[Item]) -> list[float]:
    """Each item's probability per token (the tail's per tail token), over all items' tokens."""
    if not items:
        return []
    peak = max(i.logit for i in items)
    weights = [math.exp(i.logit - peak) for i in items]
    total = sum(w * i.count for w, i in zip(weights, items))
    return [w / total for w in weights]


def _step(
    name: str, items: list[Item], removed: list[Item], probs: list[float], mass_kept: float, sampled_id: int
) -> Step:
    rows = sorted(
        (Row(i.token_id, i.token, p, i.count) for i, p in zip(items, probs)),
        key=lambda r: (r.token_id == TAIL, -r.probability),
    )
    rank = next((n for n, r in enumerate(rows, start=1) if r.token_id == sampled_id), None)
    sampled_p = next((r.probability for r in rows if r.token_id == sampled_id), 0.0)
    cut = tuple(i.token if i.count == 1 else f"({i.count} other tokens)" for i in removed)
    return Step(name, tuple(rows), cut, mass_kept, rank, sampled_p)
