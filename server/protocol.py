"""OpenAI protocol types (pydantic) for the requests stagechat accepts, and their conversion to
engine-neutral `SamplingSettings`.

Only types live here: no serving logic. Fields outside the OpenAI spec are marked "extension";
they follow vLLM's names (top_k, min_p, repetition_penalty, ignore_eos, prompt_logprobs,
structured_outputs, stream_options.continuous_usage_stats) plus stagechat's `speculative`.
Every other field is refused with a 400 naming it — an OpenAI field this server does not honour
(say `audio`, `suffix` or `functions`) must not be silently ignored. A field sent as `null` asks for
nothing and is dropped. Wrong types and out-of-range values are 400s too.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.engine import SamplingSettings, StructuredOutput
from server.registry import SamplingDefaults
from server.tools import tool_call_schema

MAX_PROMPTS = 64  # prompts in one completions request


# The sampling fields' ranges, declared once: chat, the arena's `Decoding` and the Responses API take them.
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
TopK = Annotated[int, Field(ge=-1)]  # 0 or -1 (vLLM's): off
MinP = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]  # presence and frequency
RepetitionPenalty = Annotated[float, Field(gt=0, le=2)]


class _Strict(BaseModel):
    """Unknown fields are a 400 naming them; a `null` one is dropped (it asks for nothing)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_null_extras(cls, data):
        if isinstance(data, dict):
            known = _known_fields(cls)
            return {k: v for k, v in data.items() if k in known or v is not None}
        return data


@functools.cache
def _known_fields(model: type[BaseModel]) -> frozenset[str]:
    """A model's field names and aliases, worked out once per model: the validator above runs for
    the request and for every message in it."""
    fields = model.model_fields
    return frozenset(fields) | {f.alias for f in fields.values() if f.alias}


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # which call a `tool` message answers

    @model_validator(mode="after")
    def _shape(self):
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (it may be null only on an assistant message with tool_calls)")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def plain(self) -> dict[str, Any]:
        """The message for a chat template: role and text, plus tool calls (arguments as objects,
        as templates expect) and the answered call's id."""
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": _json_or_text(c.function.arguments)},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # extension (vLLM): usage in every chunk


class JsonSchema(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # decoding is always constrained by the schema, strict or not


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only with it")
        if self.json_schema is not None:
            _checked_schema(self.json_schema.schema_)
        return self


class StructuredOutputs(_Strict):
    """Extension (vLLM's `structured_outputs`): exactly one constraint."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: Annotated[list[str], Field(min_length=1)] | None = None
    grammar: str | None = None
    json_object: Literal[True] | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("json_", "regex", "choice", "grammar", "json_object") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice, grammar, json_object")
        self.constraint()  # a JSON schema must be one
        return self

    def constraint(self) -> StructuredOutput:
        if self.json_ is not None:
            schema = json.loads(self.json_) if isinstance(self.json_, str) else self.json_
            return StructuredOutput("json", json.dumps(_checked_schema(schema)))
        if self.json_object:
            return StructuredOutput("json_object")
        if self.choice is not None:
            return StructuredOutput("choice", json.dumps(self.choice))
        if self.regex is not None:
            return StructuredOutput("regex", self.regex)
        return StructuredOutput("grammar", self.grammar or "")


def _checked_schema(schema: Any) -> dict[str, Any]:
    """A JSON schema that is one by the JSON Schema meta-schema (the engine's compiler checks more)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise ValueError("a JSON schema must be an object")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"invalid JSON schema: {exc.message}") from None
    return schema


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class _SamplingRequest(_Strict):
    """Fields shared by chat and text completions."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    user: str | None = None  # accepted; stagechat identifies clients by their API key
    # extensions (vLLM's names)
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty | None = None
    ignore_eos: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=20)
    structured_outputs: StructuredOutputs | None = None
    # extension (stagechat): "off" or a speculative method the stage lists; None = the stage's default
    speculative: str | None = None
    # extension (stagechat): a reward model that scores each answer; None = the stage's default, if any
    reward_model: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v):
        for key in v or {}:
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids (non-negative integers), not {key!r}")
        return v

    def structured(self) -> StructuredOutput | None:
        return self.structured_outputs.constraint() if self.structured_outputs else None

    def structured_param(self) -> str | None:
        """The request field a structured-output constraint came from."""
        return "structured_outputs" if self.structured_outputs else None

    def _settings(self, defaults: SamplingDefaults, max_tokens: int, logprobs: int | None) -> SamplingSettings:
        def pick(name: str, fallback):
            value = getattr(self, name)
            if value is not None:
                return value
            default = getattr(defaults, name)
            return fallback if default is None else default

        return SamplingSettings(
            max_tokens=max_tokens,
            temperature=pick("temperature", 1.0),
            top_p=pick("top_p", 1.0),
            top_k=max(pick("top_k", 0), 0),
            min_p=pick("min_p", 0.0),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=pick("repetition_penalty", 1.0),
            stop=tuple(self.stop or ()),
            seed=self.seed,
            n=self.n,
            logprobs=logprobs,
            ignore_eos=self.ignore_eos,
            prompt_logprobs=self.prompt_logprobs,
            logit_bias=tuple(sorted((int(k), float(b)) for k, b in (self.logit_bias or {}).items())),
            structured=self.structured(),
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


class ChatCompletionRequest(_SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # extensions (vLLM's names): prefill, checked against the stage's template by server.prefill
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.response_format and self.response_format.type != "text" and self.structured_outputs:
            raise ValueError("give response_format or structured_outputs, not both")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: function names must be unique")
        choice = self.tool_choice
        if choice not in (None, "none", "auto") and not names:
            raise ValueError("tool_choice 'required' or a named function needs tools")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names function '{choice.function.name}', which is not in tools")
        constrained = (self.response_format and self.response_format.type != "text") or self.structured_outputs
        if self.calls_tools() and constrained:
            raise ValueError(
                "tools (unless tool_choice is 'none') cannot be combined with response_format or structured_outputs"
            )
        return self

    def calls_tools(self) -> bool:
        """Tools are offered and may be called (tool_choice is not 'none')."""
        return bool(self.tools) and self.tool_choice != "none"

    def forced_tool(self) -> str | None:
        return self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None

    def structured(self) -> StructuredOutput | None:
        if self.calls_tools() and self.tool_choice not in (None, "auto"):
            schema = tool_call_schema(
                [t.function.model_dump() for t in self.tools], self.forced_tool(), self.parallel_tool_calls
            )
            return StructuredOutput("json", json.dumps(schema))
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            return StructuredOutput("json_object")
        if fmt is not None and fmt.type == "json_schema":
            return StructuredOutput("json", json.dumps(_checked_schema(fmt.json_schema.schema_)))
        return super().structured()

    def structured_param(self) -> str | None:
        if self.calls_tools() and self.tool_choice not in (None, "auto"):
            return "tool_choice"
        if self.response_format and self.response_format.type != "text":
            return "response_format"
        return super().structured_param()

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_settings(self, defaults: SamplingDefaults, max_tokens: int) -> SamplingSettings:
        return self._settings(defaults, max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_SamplingRequest):
    # text, several texts, token ids, or several lists of token ids: each prompt gets its own n choices
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    )
    max_tokens: int | None = Field(None, ge=0)  # 0 with echo: score the prompt, generate nothing
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @model_validator(mode="after")
    def _zero_needs_echo(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 generates nothing: use it with echo to score the prompt")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt, as text or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [p]
        return list(p)

    def single(self, prompt: str | list[int]) -> CompletionRequest:
        """This request for one of its prompts."""
        return self.model_copy(update={"prompt": prompt})

    def prompt_text(self) -> str:
        """The prompt when it is one text (token-id prompts have none)."""
        prompts = self.prompts()
        return prompts[0] if isinstance(prompts[0], str) else ""

    def prompt_ids(self) -> list[int] | None:
        """The prompt when it is one list of token ids."""
        prompts = self.prompts()
        return prompts[0] if len(prompts) == 1 and isinstance(prompts[0], list) else None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def to_settings(self, defaults: SamplingDefaults, max_tokens: int) -> SamplingSettings:
        # echo with logprobs scores the prompt too: its tokens' logprobs come from the engine
        settings = self._settings(defaults, max_tokens, self.logprobs)
        if self.echo and self.logprobs is not None and self.prompt_logprobs is None:
            from dataclasses import replace

            settings = replace(settings, prompt_logprobs=self.logprobs)
        return settings


def speculative_body(figures) -> dict[str, Any] | None:
    """Extension: what speculation did for one answer, in the response body or final chunk."""
    if figures is None:
        return None
    return {
        "method": figures.method,
        "draft_tokens": figures.draft_tokens,
        "accepted_tokens": figures.accepted_tokens,
        "acceptance_rate": round(figures.acceptance_rate, 4),
        "mean_acceptance_length": round(figures.mean_acceptance_length, 4),
    }


class TokenizeRequest(_Strict):
    """`POST /tokenize` (vLLM's shape): a text `prompt`, or chat `messages` rendered by the stage's template."""

    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None  # default: True for a prompt, False for messages (vLLM's)
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # as on chat completions (server.prefill)
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False
    tools: list[Tool] | None = None

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        if self.messages is None:  # a text prompt has no chat template: its fields would change nothing
            for name in ("tools", "add_generation_prompt", "continue_final_message", "chat_template_kwargs"):
                if name in self.model_fields_set and getattr(self, name) not in (None, False, []):
                    raise ValueError(f"{name} goes with messages")
        return self


class DetokenizeRequest(_Strict):
    model: str
    tokens: list[Annotated[int, Field(ge=0)]]


class RewardInput(_Strict):
    """One answer to score: the conversation (`messages`, or a text `prompt`) and the answer."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    prompt: str | None = None
    completion: str

    @model_validator(mode="after")
    def _one_prompt(self):
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give either messages or prompt")
        return self

    def conversation(self) -> list[dict[str, Any]] | str:
        return self.prompt if self.messages is None else [m.plain() for m in self.messages]


class RewardRequest(_Strict):
    """Extension (stagechat): `POST /v1/rewards` scores answers with a reward model."""

    model: str
    input: Annotated[list[RewardInput], Field(min_length=1, max_length=MAX_PROMPTS)]
