"""`stagechat eval`: what each stage of the demo family does, measured through the serving path.

Every stage is asked the capital of every country in held-out phrasings (`corpus.HELDOUT_QUESTIONS`,
never seen in training) at temperature 0; full-checkpoint stages also complete held-out text
prompts ("... the capital of X is"). Figures per stage:
- `qa_accuracy`: the right capital appears in the chat reply;
- `preferred_style_rate`: the reply is exactly "The capital of X is Y." (what the RLHF stage was
  taught to prefer: not terse, not rude, not rambling, not wrong);
- `completion_accuracy` (full checkpoints only): the plain completion starts with the capital;
- `draft_acceptance_rate`: the share of draft-model tokens the target accepted, for every stage
  that offers `draft_model` speculation, on the same chat prompts.

Scoring is pure functions (`score_reply`, `score_completion`, `summarize`); `run_eval` drives a
`StageService` (the same service the HTTP API uses), so this measures what users get.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.demo.corpus import HELDOUT_COMPLETIONS, HELDOUT_QUESTIONS, Country, full_answer, load_countries

# What the full demo build must reach (issue 3); `check_targets` names the ones missed.
TARGETS = {
    "base.completion_accuracy": 0.9,
    "sft.qa_accuracy": 0.9,
    "rlhf.qa_accuracy": 0.9,
    "rlhf.preferred_style_rate": 0.9,
}
STYLE_GAP = 0.4  # rlhf's preferred_style_rate must exceed sft's by this much
MAX_TOKENS = 48  # the longest training answer (rambling) is ~45 tokens


@dataclass(frozen=True)
class ReplyScore:
    correct: bool  # the right capital is in the reply
    preferred: bool  # the reply is exactly the polite full sentence


def _mentions(text: str, name: str) -> bool:
    # Whole words only: "Male" must not match "Males", nor "Lima" match "Limassol".
    return re.search(rf"(?<![\w'-]){re.escape(name)}(?![\w'-])", text) is not None


def score_reply(reply: str, country: Country) -> ReplyScore:
    text = reply.strip()
    return ReplyScore(correct=_mentions(text, country.capital), preferred=text == full_answer(country))


def score_completion(completion: str, country: Country) -> bool:
    """A plain completion of "... the capital of X is" is right when it goes on with X's capital."""
    text = completion.lstrip()
    return text.startswith(country.capital) and not re.match(r"[\w'-]", text[len(country.capital):] or " ")


@dataclass
class StageReport:
    stage: str
    qa_accuracy: float
    preferred_style_rate: float
    completion_accuracy: float | None = None
    draft_acceptance_rate: float | None = None
    chat_prompts: int = 0
    completion_prompts: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)  # a few replies, for the eye


def summarize(
    stage: str,
    chats: list[tuple[Country, str]],
    completions: list[tuple[Country, str]] = (),
    acceptance: tuple[int, int] | None = None,
    n_examples: int = 3,
) -> StageReport:
    """Figures for one stage from (country, reply) pairs; `acceptance` = (accepted, drafted) tokens."""
    scores = [score_reply(reply, c) for c, reply in chats]
    report = StageReport(
        stage=stage,
        qa_accuracy=_rate(s.correct for s in scores),
        preferred_style_rate=_rate(s.preferred for s in scores),
        chat_prompts=len(chats),
        completion_prompts=len(completions),
        examples=[{"country": c.country, "reply": reply} for c, reply in chats[:n_examples]],
    )
    if completions:
        report.completion_accuracy = _rate(score_completion(text, c) for c, text in completions)
    if acceptance is not None and acceptance[1]:
        report.draft_acceptance_rate = round(acceptance[0] / acceptance[1], 4)
    return report


def _rate(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def check_targets(reports: dict[str, StageReport]) -> list[str]:
    """The demo targets this run missed (empty when all are met or the stages are not the demo's)."""
    if not {"base", "sft", "rlhf"} <= reports.keys():
        return []
    missed = []
    for key, floor in TARGETS.items():
        stage, metric = key.split(".")
        value = getattr(reports[stage], metric)
        if value is None or value < floor:
            missed.append(f"{key} = {value} < {floor}")
    gap = reports["rlhf"].preferred_style_rate - reports["sft"].preferred_style_rate
    if gap < STYLE_GAP:
        missed.append(f"rlhf.preferred_style_rate - sft.preferred_style_rate = {gap:.3f} < {STYLE_GAP}")
    if reports["base"].qa_accuracy >= reports["sft"].qa_accuracy - 0.3:
        missed.append("base.qa_accuracy is not clearly below sft.qa_accuracy")
    return missed


def format_table(reports: dict[str, StageReport]) -> str:
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [("stage", "qa_accuracy", "preferred_style", "completion_acc", "draft_accept")]
    rows += [
        (r.stage, cell(r.qa_accuracy), cell(r.preferred_style_rate), cell(r.completion_accuracy),
         cell(r.draft_acceptance_rate))
        for r in reports.values()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows)


# --- running through the serving layer ------------------------------------------------------------
async def _collect(generation) -> tuple[str, object]:
    async for _ in generation:
        pass
    return generation.choices[0].text, generation.speculative


async def run_eval(service, countries: tuple[Country, ...] | None = None, concurrency: int = 32) -> dict[str, StageReport]:
    """Ask every stage of `service`'s registry; greedy decoding so runs compare."""
    from server.protocol import ChatCompletionRequest, CompletionRequest

    countries = countries or load_countries()
    registry = service.pool.registry
    gate = asyncio.Semaphore(concurrency)

    async def chat(stage: str, c: Country, template: str, speculative: str) -> tuple[Country, str, object]:
        request = ChatCompletionRequest(
            model=stage, messages=[{"role": "user", "content": template.format(country=c.country)}],
            temperature=0, max_tokens=MAX_TOKENS, speculative=speculative,
        )
        async with gate:
            text, spec = await _collect(await service.chat(request, client_id="stagechat-eval"))
        return c, text, spec

    async def complete(stage: str, c: Country, template: str) -> tuple[Country, str]:
        request = CompletionRequest(
            model=stage, prompt=template.format(country=c.country), temperature=0, max_tokens=8, speculative="off",
        )
        async with gate:
            text, _ = await _collect(await service.complete(request, client_id="stagechat-eval"))
        return c, text

    reports: dict[str, StageReport] = {}
    for stage, spec in registry.stages.items():
        chats = await asyncio.gather(*(chat(stage, c, t, "off") for t in HELDOUT_QUESTIONS for c in countries))
        completions = []
        if spec.model is not None:  # a full checkpoint: plain completion is what it was trained for
            completions = await asyncio.gather(*(complete(stage, c, t) for t in HELDOUT_COMPLETIONS for c in countries))
        reports[stage] = summarize(stage, [(c, t) for c, t, _ in chats], completions)
    # Speculation is per engine: run the draft variants after the plain ones (one engine at a time).
    for stage in registry.stages:
        if "draft_model" not in registry.speculative_methods(stage):
            continue
        runs = await asyncio.gather(*(chat(stage, c, HELDOUT_QUESTIONS[0], "draft_model") for c in countries))
        figures = [spec for _, _, spec in runs if spec is not None]
        accepted = sum(f.accepted_tokens for f in figures)
        drafted = sum(f.draft_tokens for f in figures)
        if drafted:
            reports[stage].draft_acceptance_rate = round(accepted / drafted, 4)
    return reports


async def _evaluate(config: Path) -> dict[str, StageReport]:
    from server.pool import EnginePool, vllm_factory
    from server.registry import load_registry
    from server.serving import StageService

    # One live engine at a time: two engines on two cores starve each other (DESIGN.md).
    pool = EnginePool(load_registry(config), vllm_factory, max_live_engines=1)
    await pool.start()
    try:
        return await run_eval(StageService(pool=pool))
    finally:
        await pool.shutdown()


def main(config: Path | None = None, as_json: bool = False) -> int:
    config = config or Path(__file__).with_name("stages.yaml")
    reports = asyncio.run(_evaluate(config))
    missed = check_targets(reports)
    payload = {"stages": {name: asdict(r) for name, r in reports.items()}, "targets_missed": missed}
    if as_json:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        print(format_table(reports))
        print(json.dumps({n: {k: v for k, v in asdict(r).items() if k != "examples"} for n, r in reports.items()}))
        for line in missed:
            print(f"target missed: {line}", file=sys.stderr)
    return 1 if missed else 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stagechat eval", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    return main(args.config, args.json)


if __name__ == "__main__":
    raise SystemExit(cli())
