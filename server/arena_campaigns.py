"""Arena campaigns: an admin loads a prompt set (JSONL), sets the overlap (raters per prompt) and the
guidelines, and mixes in gold questions; each rater works through a queue of blind battles.

What it knows: the request body; how a JSONL prompt set reads (one object a line, `messages` or
`prompt`); gold questions from the demo family's facts (`models/demo/countries.json`: "What is the
capital of X?", the right answer against another country's capital, at random places in the queue);
that an item's two answers are generated once, by the first rater's request, and every later rater
of the item judges the same answers (sides drawn anew per rater), so raters can agree or not;
and that a gold question looks exactly like any other battle until it is voted on.

What it does not know: SQL (`server/store/arena_campaigns.py`), HTTP (`server/routes/arena.py`).
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import asdict
from typing import Annotated, Any

from pydantic import Field, ValidationError

from server.arena import ArenaService, Decoding
from server.errors import bad_request
from server.leaderboard import agreement
from server.protocol import ChatMessage, _Strict
from server.serving import drain
from server.store.records import Battle, BattleSide, Campaign, CampaignItem

MAX_ITEMS = 10_000


class CampaignRequest(_Strict):
    """`POST /v1/arena/campaigns` (admin)."""

    name: Annotated[str, Field(min_length=1, max_length=255)]
    guidelines: str = ""
    overlap: int = Field(1, ge=1, le=100)
    prompts: list[dict[str, Any]] | None = None  # {"messages": [...]} or {"prompt": "..."} each
    jsonl: str | None = None  # the same, one JSON object a line
    gold: int = Field(0, ge=0, le=1000)  # gold questions to mix in
    stages: Annotated[list[str], Field(min_length=2)] | None = None
    settings: Decoding | None = None


def parse_prompts(body: CampaignRequest) -> list[list[dict[str, Any]]]:
    """Each prompt's messages; a 400 naming the first bad line."""
    if (body.prompts is None) == (body.jsonl is None):
        raise bad_request(
            "Give the prompt set as 'prompts' (a list) or as 'jsonl' (text), one of the two.", param="prompts"
        )
    if body.jsonl is not None:
        rows = []
        for n, line in enumerate(body.jsonl.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise bad_request(f"jsonl line {n} is not JSON.", param="jsonl") from None
    else:
        rows = body.prompts or []
    if not rows or len(rows) > MAX_ITEMS:
        raise bad_request(f"A campaign needs 1 to {MAX_ITEMS} prompts.", param="prompts")
    out = []
    for n, row in enumerate(rows, start=1):
        if isinstance(row, dict) and isinstance(row.get("prompt"), str) and row["prompt"].strip():
            out.append([{"role": "user", "content": row["prompt"]}])
            continue
        try:
            messages = (
                [ChatMessage.model_validate(m).plain() for m in row.get("messages") or []]
                if isinstance(row, dict)
                else []
            )
        except ValidationError:
            messages = []
        if not messages:
            raise bad_request(f"Prompt {n} needs 'messages' (chat messages) or 'prompt' (text).", param="prompts")
        out.append(messages)
    return out


def gold_questions(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` capital questions from the demo family's facts, each with a right and a wrong answer."""
    from models.demo.corpus import load_countries

    countries = list(load_countries())
    picked = rng.sample(countries, min(count, len(countries)))
    items = []
    for c in picked:
        other = rng.choice([o for o in countries if o.capital != c.capital])
        items.append(
            {
                "messages": [{"role": "user", "content": f"What is the capital of {c.country}?"}],
                "gold_right": f"The capital of {c.country} is {c.capital}.",
                "gold_wrong": f"The capital of {c.country} is {other.capital}.",
            }
        )
    return items


class CampaignService:
    def __init__(self, arena: ArenaService):
        self.arena = arena
        self.store = arena.store

    async def create(self, body: CampaignRequest) -> Campaign:
        prompts = [{"messages": m} for m in parse_prompts(body)]
        if body.stages is not None:
            await self.arena.draw(body.stages)  # unknown or too few stages: refused now, not at the first rater
        gold = gold_questions(body.gold, self.arena.rng)
        items = list(prompts)
        for question in gold:  # at random places: a rater cannot tell a gold question by where it comes
            items.insert(self.arena.rng.randint(0, len(items)), question)
        settings = body.settings.model_dump(exclude_none=True) if body.settings else {}
        return await asyncio.to_thread(
            self.store.create_campaign,
            name=body.name,
            guidelines=body.guidelines,
            overlap=body.overlap,
            stages=body.stages,
            settings=settings,
            items=items,
        )

    async def next_battle(self, campaign_id: str, rater: str) -> Battle | None:
        """The rater's next battle in this campaign (their unvoted one first); None when their queue is done."""
        campaign = await asyncio.to_thread(self.store.get_campaign, campaign_id)
        for _ in range(8):  # an item may fill up between the look and the claim: take the next then
            got = await asyncio.to_thread(self.store.open_campaign_battle, campaign_id, rater=rater)
            if got is None or isinstance(got, Battle):
                return got
            item = got
            if not item.is_gold and item.answer_x is None:
                item = await self._answer(campaign, item, rater)
            battle = await asyncio.to_thread(
                self.store.claim_item, item, rater=rater, flip=self.arena.rng.random() < 0.5
            )
            if battle is not None:
                return battle
        return None

    async def _answer(self, campaign: Campaign, item: CampaignItem, rater: str) -> CampaignItem:
        """Generate the item's two answers (both sides at once) and store them, unless another rater's
        request stored its own first: then everyone gets those."""
        stage_x, stage_y = await self.arena.draw(campaign.stages)
        gens = await self.arena.start_pair(stage_x, stage_y, item.messages, item.messages, campaign.settings, rater)
        await drain(*gens)
        x, y = (asdict(BattleSide(g.id, g.choices[0].text, g.choices[0].finish_reason)) for g in gens)
        return await asyncio.to_thread(
            self.store.set_item_answers, item.id, stage_x=stage_x, stage_y=stage_y, answer_x=x, answer_y=y
        )

    def report(self, campaign_id: str) -> dict[str, Any]:
        """Per rater: progress and accuracy on gold; the campaign's agreement (Krippendorff's alpha over
        items judged by two or more raters). Blocking: call it from a worker thread."""
        campaign = self.store.get_campaign(campaign_id)
        progress = self.store.campaign_progress(campaign_id)
        for p in progress.values():
            p["gold_accuracy"] = round(p["gold_right"] / p["gold_voted"], 4) if p["gold_voted"] else None
        agree = agreement(self.store.iter_arena_judgements(campaign_id=campaign_id))
        return {**campaign_object(campaign), "raters": progress, "agreement": agree.to_dict()}


def campaign_object(campaign: Campaign) -> dict[str, Any]:
    return {
        "id": campaign.id,
        "object": "arena.campaign",
        "name": campaign.name,
        "guidelines": campaign.guidelines,
        "overlap": campaign.overlap,
        "stages": campaign.stages,
        "prompts": campaign.items,
        "gold_questions": campaign.gold,
        "created_at": int(campaign.created_at.timestamp()),
    }
