"""`stagechat eval`: what each stage of the demo family does, measured through the serving path.

Every stage answers `heldout.eval_prompts()` at temperature 0: held-out phrasings of the four question
types for every country, held-out follow-ups (the country or the question left implicit), questions
about held-out fictional countries, held-out greetings and out-of-scope requests — none of it in any
training text. Full-checkpoint stages also complete held-out text prompts ("... the capital of X is").
That is the *test* split, which the targets are measured on; `--split dev` asks the *dev* split instead
(other phrasings and fictional names, sharing nothing with training or test), which a recipe change is
chosen on. Figures per stage:
- `accuracy[skill]`: the reply states the right fact (capital, language, currency, continent) before
  it turns to any other country;
  `qa_accuracy` is the same over all four (for base, mostly facts its prose happens to state: "... is a
  city in Europe." answers a question about Iceland's continent);
- `assistant_voice_rate`: over every chat prompt, the reply opens an utterance of its own (its first
  letter a capital), as an assistant's does, instead of going on with the user's words (" is a city
  in Europe.") as a model that was only pre-trained does;
- `followup_accuracy`: the same on the second turn of a conversation;
- `preferred_style_rate`: over real-country questions, the reply is exactly the preferred polite sentence;
- `false_refusal_rate`: over real-country questions, the reply says "I don't know" (the reward hack);
- `hallucination_rate`: over fictional countries, the reply states something that is not a refusal
  (an invented fact); `honest_refusal_rate`: the reply is `I don't know a country called X.`;
- `greeting_rate`, `out_of_scope_rate`: the reply to a greeting / an off-topic request is the polite line
  the preference data ranks first;
- `completion_accuracy` (full checkpoints): the plain completion goes on with the fact;
- `draft_acceptance_rate`: the share of draft-model tokens accepted, for stages offering `draft_model`;
  `draft_same_text_rate`: the share of those replies identical to the reply without speculation
  (1.0 for a lossless method at temperature 0);
- `mean_reward` (when the registry has a reward model): its mean score of the stage's replies, scored
  through `server.rewards` (vLLM's pooling runner) after generation, one engine at a time;
- `kl_to_sft` (adapter stages other than sft, `kl_samples` > 0): a Monte-Carlo estimate of
  KL(stage ‖ sft) per answer — answers sampled from the stage at temperature 1 in transformers,
  E[log p_stage(answer) − log p_sft(answer)] — the quantity an RL round's KL penalty holds down.
`examples` holds each stage's replies to the same five prompts (`heldout.example_prompts`).

Scoring is pure functions (`score_reply`, `score_completion`, `summarize`); `run_eval` drives a
`StageService` (the same service the HTTP API uses), so this measures what users get; `evaluate` runs
it all on a registry file and returns the reports (the `stagechat eval` command prints them).
"""

from __future__ import annotations

import asyncio
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from models.demo.corpus import GREETING, IDK, RUDE, SCOPE, SKILLS, Country, Prompt, fill, full_answer, load_countries
from models.demo.heldout import SPLITS, eval_prompts, example_prompts

# What the full demo build must reach (issue 10): (stage, metric, "min" | "max", bound).
# A metric "accuracy.*" means every skill.
TARGETS = [
    ("base", "completion_accuracy", "min", 0.95),
    ("base", "assistant_voice_rate", "max", 0.05),  # it continues text, never replies as an assistant
    ("sft", "accuracy.*", "min", 0.9),
    ("sft", "followup_accuracy", "min", 0.8),
    ("sft", "hallucination_rate", "min", 0.5),
    *[
        (stage, metric, op, bound)
        for stage in ("dpo", "rlhf")
        for metric, op, bound in (
            ("accuracy.*", "min", 0.9),
            ("followup_accuracy", "min", 0.9),
            ("hallucination_rate", "max", 0.1),
            ("preferred_style_rate", "min", 0.9),
            ("honest_refusal_rate", "min", 0.9),  # the refusal names the asked country exactly
        )
    ],
]
MAX_TOKENS = 48  # the longest training answer (rambling) is ~45 tokens
REFUSALS = ("don't know", "do not know", "not sure there is", "no country called")


@dataclass(frozen=True)
class ReplyScore:
    correct: bool  # the asked fact is in the reply (fact and follow-up prompts)
    preferred: bool  # the reply is exactly the answer the preference data ranks first
    refused: bool  # the reply says it does not know
    states_fact: bool  # the reply asserts something: not a refusal, a rude line, the scope line or empty
    own_voice: bool  # the reply opens an utterance of its own instead of going on with the user's words


def _word(name: str) -> str:
    # Whole words only: "Male" must not match "Males", nor "Lima" match "Limassol".
    return rf"(?<![\w'-]){re.escape(name)}(?![\w'-])"


def _mentions(text: str, name: str) -> bool:
    return re.search(_word(name), text) is not None


@cache
def _other_countries(country: str) -> re.Pattern:
    """Any real country's name but `country` (nor one containing it or contained in it), as a word."""
    others = [c.country for c in load_countries() if country not in c.country and c.country not in country]
    return re.compile("|".join(_word(name) for name in others))


def _about(text: str, country: Country) -> str:
    """`text` up to where it turns to another real country: a base model's prose that wanders from
    Brazil to South Sudan and names a language there has not answered a question about Brazil."""
    # Another country's name inside one of this country's facts ("Port of Spain") is not a turn away.
    masked = text
    for fact in (country.capital, country.language, country.currency, country.continent):
        masked = re.sub(_word(fact), lambda m: "_" * len(m.group()), masked)
    found = _other_countries(country.country).search(masked)
    return text[: found.start()] if found else text


def preferred_reply(prompt: Prompt) -> str:
    if prompt.kind == "greeting":
        return GREETING
    if prompt.kind == "offtopic":
        return SCOPE
    if prompt.kind == "unknown":
        return fill(IDK, prompt.country)
    return full_answer(prompt.country, prompt.skill)


def score_reply(reply: str, prompt: Prompt) -> ReplyScore:
    text = reply.strip()
    refused = any(r in text.lower() for r in REFUSALS)
    unhelpful = not text or refused or SCOPE in text or any(r in text for r in RUDE)
    correct = (
        prompt.country is not None
        and prompt.country.real
        and _mentions(_about(text, prompt.country), prompt.country.fact(prompt.skill))
    )
    return ReplyScore(
        correct=correct,
        preferred=text == preferred_reply(prompt),
        refused=refused,
        states_fact=not unhelpful,
        own_voice=text[:1].isupper(),
    )


def score_completion(completion: str, fact: str) -> bool:
    """A plain completion of "... the capital of X is" is right when it goes on with the fact."""
    text = completion.lstrip()
    return text.startswith(fact) and not re.match(r"[\w'-]", text[len(fact) :] or " ")


@dataclass
class StageReport:
    stage: str
    qa_accuracy: float = 0.0
    assistant_voice_rate: float = 0.0
    accuracy: dict[str, float] = field(default_factory=dict)
    followup_accuracy: float = 0.0
    preferred_style_rate: float = 0.0
    false_refusal_rate: float = 0.0
    hallucination_rate: float = 0.0
    honest_refusal_rate: float = 0.0
    greeting_rate: float = 0.0
    out_of_scope_rate: float = 0.0
    completion_accuracy: float | None = None
    completion_by_skill: dict[str, float] | None = None
    draft_acceptance_rate: float | None = None
    draft_same_text_rate: float | None = None
    mean_reward: float | None = None
    kl_to_sft: float | None = None
    chat_prompts: int = 0
    completion_prompts: int = 0
    examples: list[dict] = field(default_factory=list)  # replies to heldout.example_prompts()

    def value(self, metric: str) -> float | None:
        if metric.startswith("accuracy."):
            return self.accuracy.get(metric.split(".", 1)[1])
        return getattr(self, metric)


def _rate(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def summarize(
    stage: str,
    chats: list[tuple[Prompt, str]],
    completions: list[tuple[str, str, str]] = (),
    acceptance: tuple[int, int] | None = None,
    examples: list[tuple[Prompt, str]] = (),
) -> StageReport:
    """Figures for one stage from (prompt, reply) pairs; `completions` = (skill, fact, text);
    `acceptance` = (accepted, drafted) draft tokens."""
    by_kind: dict[str, list[tuple[Prompt, ReplyScore]]] = {}
    for prompt, reply in chats:
        by_kind.setdefault(prompt.kind, []).append((prompt, score_reply(reply, prompt)))
    facts, followups = by_kind.get("fact", []), by_kind.get("followup", [])
    real = facts + followups
    unknown = [s for _, s in by_kind.get("unknown", [])]
    report = StageReport(
        stage=stage,
        qa_accuracy=_rate(s.correct for _, s in facts),
        assistant_voice_rate=_rate(s.own_voice for scored in by_kind.values() for _, s in scored),
        accuracy={
            skill: _rate(s.correct for p, s in facts if p.skill == skill)
            for skill in SKILLS
            if any(p.skill == skill for p, _ in facts)
        },
        followup_accuracy=_rate(s.correct for _, s in followups),
        preferred_style_rate=_rate(s.preferred for _, s in real),
        false_refusal_rate=_rate(s.refused for _, s in real),
        hallucination_rate=_rate(s.states_fact for s in unknown),
        honest_refusal_rate=_rate(s.preferred for s in unknown),
        greeting_rate=_rate(s.preferred for _, s in by_kind.get("greeting", [])),
        out_of_scope_rate=_rate(s.preferred for _, s in by_kind.get("offtopic", [])),
        chat_prompts=len(chats),
        completion_prompts=len(completions),
        examples=[{"kind": p.kind, "prompt": p.message_list, "reply": reply.strip()} for p, reply in examples],
    )
    if completions:
        report.completion_accuracy = _rate(score_completion(text, fact) for _, fact, text in completions)
        report.completion_by_skill = {
            skill: _rate(score_completion(t, f) for s, f, t in completions if s == skill)
            for skill in SKILLS
            if any(s == skill for s, _, _ in completions)
        }
    if acceptance is not None and acceptance[1]:
        report.draft_acceptance_rate = round(acceptance[0] / acceptance[1], 4)
    return report


def check_targets(reports: dict[str, StageReport]) -> list[str]:
    """The demo targets this run missed, for the demo stages present (none when base/sft are absent)."""
    if not {"base", "sft"} <= reports.keys():
        return []
    missed = []
    for stage, metric, op, bound in TARGETS:
        if stage not in reports:
            continue
        report = reports[stage]
        metrics = [f"accuracy.{s}" for s in report.accuracy] if metric == "accuracy.*" else [metric]
        for m in metrics:
            value = report.value(m)
            if value is None or (value < bound if op == "min" else value > bound):
                missed.append(f"{stage}.{m} = {value} {'<' if op == 'min' else '>'} {bound}")
    return missed


COLUMNS = [
    ("voice", "assistant_voice_rate"),
    ("capital", "accuracy.capital"),
    ("language", "accuracy.language"),
    ("currency", "accuracy.currency"),
    ("continent", "accuracy.continent"),
    ("follow-up", "followup_accuracy"),
    ("preferred", "preferred_style_rate"),
    ("hallucinate", "hallucination_rate"),
    ("honest-idk", "honest_refusal_rate"),
    ("false-idk", "false_refusal_rate"),
    ("greeting", "greeting_rate"),
    ("off-topic", "out_of_scope_rate"),
    ("completion", "completion_accuracy"),
    ("draft-acc", "draft_acceptance_rate"),
    ("reward", "mean_reward"),
    ("kl-sft", "kl_to_sft"),
]


def format_table(reports: dict[str, StageReport]) -> str:
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [("stage", *(name for name, _ in COLUMNS))]
    rows += [(r.stage, *(cell(r.value(m)) for _, m in COLUMNS)) for r in reports.values()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows)


# --- running through the serving layer ------------------------------------------------------------
async def _collect(generation) -> tuple[str, object]:
    async for _ in generation:
        pass
    return generation.choices[0].text, generation.speculative


async def run_eval(
    service,
    countries: tuple[Country, ...] | None = None,
    fictional: int | None = None,
    concurrency: int = 32,
    keep_replies: dict | None = None,
    split: str = "test",
    stages: list[str] | None = None,
) -> dict[str, StageReport]:
    """Ask every stage of `service`'s registry (or `stages`) one split's prompts; greedy decoding so
    runs compare.

    `countries` / `fictional` narrow the prompt set (tests); the defaults ask everything. `keep_replies`,
    when given, receives each stage's (prompt, reply) pairs."""
    from server.protocol import ChatCompletionRequest, CompletionRequest

    countries = countries or load_countries()
    prompts = eval_prompts(countries, fictional=fictional, split=split)
    examples = example_prompts() if split == "test" else []  # the five shown in docs/measurements.md are test material
    completion_templates = SPLITS[split].completions
    registry = service.pool.registry
    gate = asyncio.Semaphore(concurrency)

    async def chat(stage: str, prompt: Prompt, speculative: str) -> tuple[Prompt, str, object]:
        request = ChatCompletionRequest(
            model=stage,
            messages=prompt.message_list,
            temperature=0,
            max_tokens=MAX_TOKENS,
            speculative=speculative,
        )
        async with gate:
            text, spec = await _collect(await service.chat(request, client_id="stagechat-eval"))
        return prompt, text, spec

    async def complete(stage: str, c: Country, skill: str) -> tuple[str, str, str]:
        request = CompletionRequest(
            model=stage,
            prompt=fill(completion_templates[skill], c),
            temperature=0,
            max_tokens=8,
            speculative="off",
        )
        async with gate:
            text, _ = await _collect(await service.complete(request, client_id="stagechat-eval"))
        return skill, c.fact(skill), text

    reports: dict[str, StageReport] = {}
    replies: dict[str, list[tuple[Prompt, str]]] = {}
    chosen = stages or list(registry.stages)
    for stage in chosen:
        spec = registry.stages[stage]
        chats = await asyncio.gather(*(chat(stage, p, "off") for p in prompts + examples))
        completions = []
        if spec.model is not None:  # a full checkpoint: plain completion is what it was trained for
            completions = await asyncio.gather(*(complete(stage, c, s) for s in SKILLS for c in countries))
        pairs = [(p, t) for p, t, _ in chats]
        reports[stage] = summarize(stage, pairs[: len(prompts)], completions, examples=pairs[len(prompts) :])
        replies[stage] = pairs[: len(prompts)]
    # Speculation is per engine: run the draft variants after the plain ones (one engine at a time).
    facts = [p for p in prompts if p.kind == "fact"][: len(countries)]
    for stage in chosen:
        if "draft_model" not in registry.speculative_methods(stage):
            continue
        runs = await asyncio.gather(*(chat(stage, p, "draft_model") for p in facts))
        plain = {id(p): text for p, text in replies[stage]}
        reports[stage].draft_same_text_rate = _rate(text == plain[id(p)] for p, text, _ in runs)
        figures = [spec for _, _, spec in runs if spec is not None]
        accepted = sum(f.accepted_tokens for f in figures)
        drafted = sum(f.draft_tokens for f in figures)
        if drafted:
            reports[stage].draft_acceptance_rate = round(accepted / drafted, 4)
    if keep_replies is not None:
        keep_replies.update(replies)
    return reports


async def mean_rewards(registry, replies: dict[str, list[tuple[Prompt, str]]], reward_model: str) -> dict[str, float]:
    """The reward model's mean score of each stage's replies, through the server's reward scoring."""
    from server.rewards import RewardService

    service = RewardService(registry)
    await service.start()
    try:
        means = {}
        for stage, pairs in replies.items():
            scores = await service.score(reward_model, [(p.message_list, reply) for p, reply in pairs])
            means[stage] = round(sum(scores) / len(scores), 4) if scores else None
        return means
    finally:
        await service.shutdown()


def kl_to_reference(
    checkpoint: str,
    adapter: str,
    reference: str,
    prompts: list[Prompt],
    samples: int = 2,
    max_new_tokens: int = MAX_TOKENS,
    seed: int = 0,
) -> float:
    """Monte-Carlo KL(adapter ‖ reference) per answer: answers sampled from `adapter` (temperature 1),
    mean of their summed log-probability differences. Both are LoRA adapters on `checkpoint`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32), adapter, adapter_name="policy"
    )
    model.load_adapter(reference, adapter_name="reference")
    model.eval()

    def answer_logprob(ids: torch.Tensor, start: int) -> torch.Tensor:
        logits = model(input_ids=ids).logits[:, start - 1 : -1].log_softmax(-1)
        return logits.gather(-1, ids[:, start:, None])[..., 0]

    total, n = 0.0, 0
    with torch.no_grad():
        for p in prompts:
            ids = tokenizer.apply_chat_template(
                p.message_list, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )["input_ids"]
            model.set_adapter("policy")
            out = model.generate(
                input_ids=ids,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in out:
                seq = row[None]
                answer = seq[:, ids.shape[1] :]
                keep = int((answer != tokenizer.pad_token_id).sum())  # generation pads after eos
                seq = seq[:, : ids.shape[1] + keep]
                model.set_adapter("policy")
                lp_policy = answer_logprob(seq, ids.shape[1])
                model.set_adapter("reference")
                lp_reference = answer_logprob(seq, ids.shape[1])
                total += float((lp_policy - lp_reference).sum())
                n += 1
    return round(total / max(1, n), 4)


class EvalError(ValueError):
    """The evaluation cannot run as asked (e.g. a stage the registry does not have)."""


def evaluate(
    config: Path, *, kl_samples: int = 2, split: str = "test", stages: list[str] | None = None
) -> dict[str, StageReport]:
    """Every stage's (or `stages`') report on one split, through vLLM engines started here, one at a time."""
    return asyncio.run(_evaluate(config, kl_samples, split, stages))


@asynccontextmanager
async def serving_one_engine_at_a_time(registry):
    """A `StageService` on vLLM engines for `registry`, at most one alive at a time (two engines on two
    cores starve each other); the engines are shut down on leaving."""
    from server.pool import EnginePool, vllm_factory
    from server.serving import StageService

    pool = EnginePool(registry, vllm_factory, max_live_engines=1)
    await pool.start()
    try:
        yield StageService(pool=pool)
    finally:
        await pool.shutdown()


async def _evaluate(config: Path, kl_samples: int, split: str, stages: list[str] | None) -> dict[str, StageReport]:
    from server.registry import load_registry

    registry = load_registry(config)
    unknown = sorted(set(stages or ()) - set(registry.stages))
    if unknown:
        raise EvalError(f"no stage {', '.join(unknown)} in {config}")
    replies: dict[str, list[tuple[Prompt, str]]] = {}
    async with serving_one_engine_at_a_time(registry) as service:
        reports = await run_eval(service, keep_replies=replies, split=split, stages=stages)
    if registry.reward_models:  # scored after generation, so only one engine runs at a time
        name = "rm" if "rm" in registry.reward_models else next(iter(registry.reward_models))
        for stage, mean in (await mean_rewards(registry, replies, name)).items():
            reports[stage].mean_reward = mean
    if kl_samples and "sft" in registry.stages and registry.stages["sft"].adapter:
        prompts = [p for p in eval_prompts(split=split) if p.kind in ("fact", "unknown", "followup")][::24]
        for stage in reports:
            spec = registry.stages[stage]
            if spec.adapter and stage != "sft" and registry.root(stage) == registry.root("sft"):
                reports[stage].kl_to_sft = await asyncio.to_thread(
                    kl_to_reference,
                    registry.checkpoint(registry.root(stage)),
                    spec.adapter,
                    registry.stages["sft"].adapter,
                    prompts,
                    kl_samples,
                )
    return reports
