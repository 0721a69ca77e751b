"""`POST /v1/branches` (extension): an answer continued from an alternative token by one or more
stages side by side (`server.branches`); each branch is the plain completions request it reports."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.auth import authenticate
from server.branches import BranchRequest
from server.responses import Rendering, completion_body
from server.serving import drain

router = APIRouter(prefix="/v1")


@router.post("/branches")
async def branches(body: BranchRequest, request: Request):
    client = authenticate(request, request.app.state.settings)
    service = request.app.state.service
    prefix = body.prefix()  # a position past the end is a 400 before anything routes
    gens = []
    for stage in body.stages():  # every stage is checked (and admitted) before any runs
        gen = await service.complete(body.completion_for(stage, prefix), client)
        tokenizer = gen.route.engine.tokenizer
        if hasattr(tokenizer, "__len__"):
            body.prefix(len(tokenizer))  # the token in this stage's vocabulary (a dropped gen frees its slot)
        gens.append(gen)
    await drain(*gens)
    how = Rendering(echo=body.echo, prompt_logprobs=body.prompt_logprobs is not None)
    return {
        "object": "branches",
        "prefix": prefix,
        "position": body.position,
        "token": body.token,
        "branches": [completion_body([g], how) for g in gens],
    }
