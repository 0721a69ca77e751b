"""Tokenising and detokenising with a stage's tokenizer (vLLM's `/tokenize` and `/detokenize`).

Chat messages render exactly as `/v1/chat/completions` renders them (the same template, tools
included), so a client can count a conversation's tokens before sending it. Knows the pool's
engines (for their tokenizers); nothing about HTTP.
"""

from __future__ import annotations

import asyncio

from server.errors import bad_request, not_ready
from server.prefill import chat_text, has_template, template_options
from server.protocol import DetokenizeRequest, TokenizeRequest
from server.serving import StageService
from server.tools import template_tools


class Tokenizing:
    def __init__(self, service: StageService):
        self.pool = service.pool

    async def _engine(self, stage: str):
        self.pool.resolve(stage, None)  # 404 for an unknown stage
        if not self.pool.ready:
            raise not_ready()
        return (await self.pool.route(stage)).engine

    async def tokenize(self, request: TokenizeRequest) -> dict:
        engine = await self._engine(request.model)
        tokenizer = engine.tokenizer
        if request.messages is not None:
            messages = [m.plain() for m in request.messages]
            tools = template_tools(
                request,
                self.pool.registry.stages[request.model].tool_parser,
                getattr(tokenizer, "chat_template", None),
                request.model,
            )
            options = None
            if request.continue_final_message or request.chat_template_kwargs or has_template(tokenizer):
                options = template_options(request, tokenizer)  # prefill, as the chat endpoint checks it
            ids = await asyncio.to_thread(
                _render,
                tokenizer,
                messages,
                tools,
                request.add_generation_prompt,
                bool(request.add_special_tokens),
                options,
            )
        else:
            add = True if request.add_special_tokens is None else request.add_special_tokens
            ids = await asyncio.to_thread(tokenizer.encode, request.prompt, add_special_tokens=add)
        body = {"count": len(ids), "max_model_len": engine.max_model_len, "tokens": ids, "token_strs": None}
        if request.return_token_strs:
            body["token_strs"] = tokenizer.convert_ids_to_tokens(ids)
        return body

    async def detokenize(self, request: DetokenizeRequest) -> dict:
        engine = await self._engine(request.model)
        vocab = len(engine.tokenizer) if hasattr(engine.tokenizer, "__len__") else None
        if vocab is not None and any(t >= vocab for t in request.tokens):
            raise bad_request(f"tokens: ids must be below the vocabulary size {vocab}.", param="tokens")
        return {"prompt": await asyncio.to_thread(engine.tokenizer.decode, request.tokens)}


def _render(
    tokenizer, messages, tools, add_generation_prompt: bool, add_special_tokens: bool, options: dict | None = None
) -> list[int]:
    text = chat_text(tokenizer, messages, tools, options, add_generation_prompt=add_generation_prompt)
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)
