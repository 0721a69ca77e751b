"""The OpenAI Responses API's request (`POST /v1/responses`), as stagechat honours it, and its conversion to
the chat request every answer is generated from.

Only types live here: no serving logic (`server/responses_api.py`). Honoured: `model` (a stage), `input` (a
text, or messages with text parts), `instructions`, `previous_response_id`, `store`, `stream`,
`temperature`, `top_p`, `max_output_tokens`, `metadata`, `user`; `text` only as plain text, `truncation`
only as "disabled" and `tools` only empty (what this server does anyway). Extensions, as chat has them:
`speculative`, `reward_model`, and vLLM's `top_k`, `min_p`, `presence_penalty`, `frequency_penalty`,
`repetition_penalty`, `seed`, `ignore_eos`. Every other field (say `tools` with a tool, `reasoning`, `include`,
`background`, `conversation`, `prompt`) is refused with a 400 naming it, as `server/protocol.py` does for
chat; so are input items other than text messages (images, files, function calls).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from server.protocol import MinP, Penalty, RepetitionPenalty, Temperature, TopK, TopP, _Strict

MAX_METADATA = 16  # OpenAI's limit: 16 pairs, keys up to 64 characters, values up to 512


class InputText(_Strict):
    """A text part: `input_text` in what a user or system says, `output_text` in an earlier answer sent back."""

    type: Literal["input_text", "output_text"]
    text: str
    annotations: Annotated[list[Any], Field(max_length=0)] | None = None  # echoed output parts carry []
    logprobs: list[Any] | None = None  # likewise; ignored (they describe an earlier answer)


class InputMessage(_Strict):
    """An input message (OpenAI's EasyInputMessage, or an output message sent back with its id/status)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class TextFormat(_Strict):
    type: Literal["text"]


class TextConfig(_Strict):
    format: TextFormat | None = None  # structured outputs (json_schema) are chat's: not here yet


class ResponsesRequest(_Strict):
    model: str
    input: str | list[InputMessage]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = True  # null: the default (true), as OpenAI's spec has it
    stream: bool | None = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = None
    user: str | None = None  # accepted; stagechat identifies clients by their API key
    text: TextConfig | None = None
    truncation: Literal["disabled"] | None = None  # "auto" (dropping old turns) is not done: too long is a 400
    tools: list[Any] | None = None
    # extensions, as chat has them
    speculative: str | None = None
    reward_model: str | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: RepetitionPenalty | None = None
    seed: int | None = None
    ignore_eos: bool | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_items(cls, v):
        # Items are checked here rather than by the union, whose first complaint would be "not a string".
        if not isinstance(v, list):
            return v
        if not v:
            raise ValueError("input must not be empty")
        return [_input_item(i, item) for i, item in enumerate(v)]

    @field_validator("metadata")
    @classmethod
    def _few_pairs(cls, v):
        if v is not None and len(v) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} pairs")
        return v

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v):
        if v:
            raise ValueError("this server does not call tools through /v1/responses (use /v1/chat/completions)")
        return v

    def input_messages(self) -> list[dict[str, str]]:
        """This turn's input as chat messages (role and text)."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        return [{"role": m.role, "content": m.text()} for m in self.input]

    def chat_fields(self) -> dict[str, Any]:
        """The chat request's fields this request sets (besides messages): sampling and the extensions."""
        names = (
            "model",
            "temperature",
            "top_p",
            "speculative",
            "reward_model",
            "top_k",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
            "seed",
            "ignore_eos",
            "stream",
        )
        fields = {n: getattr(self, n) for n in names if getattr(self, n) is not None}
        if self.max_output_tokens is not None:
            fields["max_completion_tokens"] = self.max_output_tokens
        return fields


def _input_item(i: int, item: Any) -> InputMessage:
    if isinstance(item, dict) and item.get("type", "message") != "message":
        raise ValueError(
            f"input[{i}]: items of type {item.get('type')!r} are not supported by this server (only text messages)"
        )
    content = item.get("content") if isinstance(item, dict) else None
    for j, part in enumerate(content if isinstance(content, list) else []):
        if isinstance(part, dict) and part.get("type") not in ("input_text", "output_text"):
            raise ValueError(
                f"input[{i}].content[{j}]: part type {part.get('type')!r} is not supported by this "
                "server (only text parts)"
            )
    try:
        return InputMessage.model_validate(item)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        what = "unsupported" if err["type"] == "extra_forbidden" else err["msg"]
        raise ValueError(f"input[{i}]{'.' + where if where else ''}: {what}") from None


# What a chat request's field is called here, for errors the chat path raises about it.
CHAT_TO_RESPONSES_PARAM = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
}
