"""Tool calling: the JSON schema that forces a call, and turning generated text into `tool_calls`.

Three ways a chat request can ask for tools (OpenAI's `tool_choice`):
- "auto" (the default when tools are given): the model decides. Its text is parsed by the vLLM tool
  parser the stage's registry entry names (`tool_parser:`, e.g. "hermes": `<tool_call>{...}</tool_call>`).
- "required": decoding is constrained to a JSON list of `{"name", "parameters"}` calls (vLLM's scheme).
- a named function: decoding is constrained to that function's parameters; the text is its arguments.
This module knows OpenAI tool shapes and vLLM's parsers; nothing about engines, stages or HTTP.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


def tool_call_schema(
    functions: list[dict[str, Any]], forced: str | None, parallel: bool | None = None
) -> dict[str, Any]:
    """The JSON schema decoding must follow when a call is forced: the named function's parameters,
    or ("required") a non-empty list of calls to any of the functions."""
    params = {f["name"]: f.get("parameters") or {"type": "object", "properties": {}} for f in functions}
    if forced is not None:
        return params[forced]
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "anyOf": [
                {
                    "properties": {"name": {"type": "string", "enum": [name]}, "parameters": p},
                    "required": ["name", "parameters"],
                }
                for name, p in params.items()
            ],
        },
    }
    if parallel is False:
        schema["maxItems"] = 1
    return schema


def template_supports_tools(chat_template: str | None) -> bool:
    """Does this chat template render a `tools` list at all (else the model never sees them)?"""
    return bool(chat_template) and "tools" in chat_template


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(name: str, arguments: Any, index: int | None = None) -> dict[str, Any]:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    call = {"id": call_id(), "type": "function", "function": {"name": name, "arguments": args}}
    return call if index is None else {"index": index, **call}


class ToolCallReader:
    """Reads one choice's generated text as tool calls, whole (`final`) or as it streams (`feed`).

    `mode` is "auto" (parse with the vLLM tool parser `parser`), "required" or "named" (`name`)."""

    def __init__(
        self,
        mode: str,
        *,
        tokenizer=None,
        parser: str | None = None,
        name: str | None = None,
        parallel: bool | None = None,
    ):
        self.mode = mode
        self.name = name
        self.parallel = parallel
        self.text = ""
        self._parser = None
        self._sent_named = False
        if mode == "auto":
            from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

            self._parser = ToolParserManager.get_tool_parser(parser)(tokenizer)

    # -- the whole answer ------------------------------------------------------------------------

    def final(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(content, tool_calls) of a finished answer."""
        if self.mode == "named":
            return None, [_call(self.name, text)]
        if self.mode == "required":
            try:
                calls = json.loads(text)
            except ValueError:  # cut off by max_tokens: not a complete call list
                return text, []
            return None, [_call(c["name"], c["parameters"]) for c in calls]
        info = self._parser.extract_tool_calls(text, None)
        if not info.tools_called:
            return text, []
        calls = [_call(c.function.name, c.function.arguments) for c in info.tool_calls]
        if self.parallel is False:
            calls = calls[:1]
        return info.content, calls

    # -- streaming -------------------------------------------------------------------------------

    def feed(self, delta: str, finished: bool) -> tuple[str | None, list[dict[str, Any]]]:
        """(content delta, tool-call deltas) for the next piece of a streamed answer."""
        previous, self.text = self.text, self.text + delta
        if self.mode == "named":  # the text is the arguments: stream them as they come
            head = [] if self._sent_named else [_call(self.name, "", index=0)]
            self._sent_named = True
            if head:
                head[0]["function"]["arguments"] = delta
                return None, head
            return None, [{"index": 0, "function": {"arguments": delta}}] if delta else []
        if self.mode == "required":  # a JSON list: whole calls once it is complete
            if not finished:
                return None, []
            content, calls = self.final(self.text)
            return content, [{"index": i, **c} for i, c in enumerate(calls)]
        message = self._parser.extract_tool_calls_streaming(previous, self.text, delta, [], [], [], None)
        if message is None:
            return None, []
        calls = [c.model_dump(exclude_none=True) for c in message.tool_calls or []]
        if self.parallel is False:
            calls = [c for c in calls if c.get("index", 0) == 0]
        return message.content, calls

    @property
    def called(self) -> bool:
        if self.mode == "named":
            return True
        if self.mode == "required":
            return bool(self.text)
        return bool(self._parser and self._parser.prev_tool_call_arr)


def template_tools(request, parser: str | None, chat_template: str | None, stage: str) -> list[dict] | None:
    """The tools to render into the prompt, after checking the stage can take them (else a 400)."""
    from server.errors import bad_request

    if not request.tools:
        return None
    if parser is None:
        raise bad_request(
            f"Stage '{stage}' does not support tools: its registry entry names no tool_parser.",
            param="tools",
            code="tools_not_supported",
        )
    if not template_supports_tools(chat_template):
        raise bad_request(
            f"Stage '{stage}' does not support tools: its chat template does not render them.",
            param="tools",
            code="tools_not_supported",
        )
    return [t.model_dump(exclude_none=True) for t in request.tools]
