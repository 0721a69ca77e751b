"""OpenAI protocol types (pydantic) for the requests stagechat accepts, and their conversion to
engine-neutral `SamplingSettings`.

Only types live here: no serving logic. Fields outside the OpenAI spec are marked "extension";
they follow vLLM's names (top_k, min_p, repetition_penalty, ignore_eos) plus stagechat's
`speculative`. Unknown fields are ignored, as OpenAI's API does; wrong types and out-of-range
values are 400s.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.engine import SamplingSettings
from server.registry import SamplingDefaults


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def plain(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: int | None = None
    user: str | None = None
    # extensions (vLLM's names)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=2)
    ignore_eos: bool = False
    # extension (stagechat): "off" or a speculative method the stage lists; None = the stage's default
    speculative: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

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
            top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=pick("repetition_penalty", 1.0),
            stop=tuple(self.stop or ()),
            seed=self.seed,
            n=self.n,
            logprobs=logprobs,
            ignore_eos=self.ignore_eos,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def to_settings(self, defaults: SamplingDefaults, max_tokens: int) -> SamplingSettings:
        return self._settings(defaults, max_tokens, (self.top_logprobs or 0) if self.logprobs else None)


class CompletionRequest(_SamplingRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v):
        if v:
            raise ValueError("echo is not supported")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def to_settings(self, defaults: SamplingDefaults, max_tokens: int) -> SamplingSettings:
        return self._settings(defaults, max_tokens, self.logprobs)


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
