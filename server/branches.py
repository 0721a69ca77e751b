"""Branches: leave an answer at one of its tokens, put an alternative token there, and let one or more
stages go on from that point, side by side.

A branch is a text completion whose prompt is token-exact: the original prompt's ids, the answer's
ids before `position`, then `token` (`prefix`). So it is reproducible over the plain API too: send
that prefix as a token-id `prompt` to `/v1/completions` with `echo` (and `logprobs` for the prompt's
figures). `POST /v1/branches` does it for several stages at once. Stages must share the tokenizer of
the answer's stage (the stages of one family do): token ids mean nothing across tokenizers.
Knows the protocol types; the route runs the completions through `StageService`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from server.errors import bad_request
from server.protocol import CompletionRequest, TokenIds, _SamplingRequest

MAX_BRANCH_STAGES = 8


class BranchRequest(_SamplingRequest):
    """Extension (stagechat): `POST /v1/branches`. The sampling fields are those of completions."""

    model: str | Annotated[list[str], Field(min_length=1, max_length=MAX_BRANCH_STAGES)]
    prompt: TokenIds  # the answer's prompt, as token ids (chat: the rendered template, e.g. from /tokenize)
    completion: list[Annotated[int, Field(ge=0)]]  # the answer's token ids
    position: int = Field(ge=0)  # the answer's token the branch replaces (len(completion): append)
    token: int = Field(ge=0)  # what the branch puts there
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = True

    @model_validator(mode="after")
    def _one_body(self):
        # The branches come back in one body (each is reproducible as its own streamed completion).
        for name in ("stream", "stream_options"):
            if name in self.model_fields_set and getattr(self, name):
                raise ValueError(f"{name}: branches answer in one body; stream a branch as a completion instead")
        return self

    def stages(self) -> list[str]:
        return [self.model] if isinstance(self.model, str) else list(self.model)

    def prefix(self, vocab_size: int | None = None) -> list[int]:
        """The branch's prompt: prompt + completion[:position] + [token] (a 400 naming the field when
        the position is past the answer's end or the token outside the vocabulary)."""
        if self.position > len(self.completion):
            raise bad_request(
                f"position: {self.position} is past the end of the answer ({len(self.completion)} "
                "tokens; the last branch point is its length, which appends).",
                param="position",
            )
        if vocab_size is not None and self.token >= vocab_size:
            raise bad_request(f"token: {self.token} is outside the vocabulary ({vocab_size} tokens).", param="token")
        return [*self.prompt, *self.completion[: self.position], self.token]

    def completion_for(self, stage: str, prefix: list[int]) -> CompletionRequest:
        """The plain completions request this branch is, for one stage."""
        fields: dict[str, Any] = self.model_dump(
            exclude_unset=True, by_alias=True, exclude={"model", "prompt", "completion", "position", "token"}
        )
        return CompletionRequest.model_validate({**fields, "model": stage, "prompt": prefix, "echo": self.echo})
