"""`POST /v1/rewards` (extension): a reward model's score of each (conversation, answer) pair.

Thin: validation is `RewardRequest`'s, scoring is `RewardService.score`'s. Unknown reward model →
404; a stage's name → 400 (stages generate; only reward models score); an input longer than the
reward model's context → 400 naming it. Nothing is stored: scores of served answers are logged by
the serving layer when a chat or completion request asks for them (`"reward_model"`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.auth import authenticate
from server.errors import bad_request
from server.protocol import RewardRequest
from server.rewards import TooLong, too_long_error

router = APIRouter(prefix="/v1")


@router.post("/rewards")
async def rewards(body: RewardRequest, request: Request):
    authenticate(request, request.app.state.settings)
    service = request.app.state.service.rewards
    if body.model in service.registry.stages:
        raise bad_request(
            f"'{body.model}' is a stage, not a reward model; stages generate answers, reward "
            f"models score them. Reward models: {', '.join(service.names()) or 'none'}.",
            param="model",
            code="model_is_stage",
        )
    try:
        scores = await service.score(body.model, [(item.conversation(), item.completion) for item in body.input])
    except TooLong as exc:
        raise too_long_error(exc) from None
    return {
        "object": "list",
        "model": body.model,
        "data": [{"object": "reward", "index": i, "score": score} for i, score in enumerate(scores)],
    }
