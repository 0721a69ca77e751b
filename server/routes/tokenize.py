"""`POST /tokenize` and `POST /detokenize` (vLLM's shapes), at the root as vLLM serves them and
under `/v1` for clients whose base URL ends there."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.auth import authenticate
from server.protocol import DetokenizeRequest, TokenizeRequest
from server.tokenizing import Tokenizing

router = APIRouter()


def _tokenizing(request: Request) -> Tokenizing:
    authenticate(request, request.app.state.settings)
    return Tokenizing(request.app.state.service)


@router.post("/tokenize")
@router.post("/v1/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    return await _tokenizing(request).tokenize(body)


@router.post("/detokenize")
@router.post("/v1/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    return await _tokenizing(request).detokenize(body)
