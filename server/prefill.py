"""Prefill: how a chat request's conversation is rendered by its stage's chat template.

vLLM's request fields, with vLLM's semantics: `add_generation_prompt` (default true: open a new
assistant turn), `continue_final_message` (leave the final message open so the stage goes on from
it: "prefilling" the answer; the final message must be the assistant's, and asking for both is a
400, as vLLM refuses it) and `chat_template_kwargs` (extra variables for the template).

Where vLLM silently drops a template kwarg the template never reads, this server refuses it with a
400 naming `chat_template_kwargs.KEY` (a field that does nothing must not be ignored silently), and a
stage without a chat template (a base checkpoint chatting in the plain transcript) refuses every
non-default prefill field with a 400 naming it. `chat_text` is the one rendering of a chat (for
generation, scoring and `/tokenize`): the template's, or the plain transcript of a stage without one.
Knows tokenizers and templates; nothing about HTTP or engines.
"""

from __future__ import annotations

import functools
from typing import Any

from server.errors import bad_request

# A base checkpoint without a chat template still chats, in this plain transcript format; the
# stop string keeps it from writing the user's next turn too.
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
PLAIN_STOP = "\nUser:"
PLAIN_REPLY = "\nAssistant:"


def plain_transcript(messages: list[dict[str, str]]) -> str:
    lines = [f"{PLAIN_ROLES.get(m['role'], m['role'])}: {m['content']}" for m in messages]
    return "\n".join(lines) + PLAIN_REPLY


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_text(
    tokenizer,
    messages: list[dict[str, Any]],
    tools: list[dict] | None = None,
    options: dict[str, Any] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """The chat as the stage reads it: its template's rendering (with `tools`; `options`, a prefill's
    template arguments from `template_options`, replace `add_generation_prompt`), or the plain
    transcript for a stage without a template. A template that cannot render a prefill is a 400."""
    if not has_template(tokenizer):
        text = plain_transcript(messages)
        return text if add_generation_prompt else text[: -len(PLAIN_REPLY)]
    extra = {"tools": tools} if tools else {}
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, **(options or {"add_generation_prompt": add_generation_prompt}), **extra
        )
    except Exception as exc:  # a template that cannot render what the prefill asks
        if options is None:
            raise
        raise render_error(exc, options) from None


# Variables a request may not set through chat_template_kwargs: the renderer sets them itself
# (vLLM refuses chat_template and tokenize; the rest would silently override the request's own fields).
RESERVED = frozenset(
    {
        "chat_template",
        "tokenize",
        "messages",
        "tools",
        "documents",
        "add_generation_prompt",
        "continue_final_message",
        "conversation",
    }
)


def template_options(request, tokenizer) -> dict[str, Any] | None:
    """The keyword arguments for `apply_chat_template` a chat request asks for, after checking them
    against the stage's tokenizer; None when the request asks for nothing beyond the default.

    Raises a 400 naming the field that cannot be honoured."""
    sent = request.model_fields_set
    continues = request.continue_final_message
    kwargs = request.chat_template_kwargs or {}
    asked = continues or not request.add_generation_prompt or bool(kwargs)
    if not asked:
        return None
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        field = (
            "continue_final_message"
            if continues
            else "add_generation_prompt"
            if not request.add_generation_prompt
            else "chat_template_kwargs"
        )
        raise bad_request(
            f"{field}: this stage has no chat template (it chats in a plain transcript), so its "
            "prompt cannot be shaped this way; use /v1/completions with the text to continue.",
            param=field,
            code="no_chat_template",
        )
    if continues and request.add_generation_prompt and "add_generation_prompt" in sent:
        # vLLM's rule: both explicitly true is a contradiction (a new turn vs. the open final one).
        raise bad_request(
            "continue_final_message: cannot set both continue_final_message and add_generation_prompt to true.",
            param="continue_final_message",
        )
    if continues and request.messages[-1].role != "assistant":
        raise bad_request(
            "continue_final_message: the final message must be the assistant's (the text the answer starts with).",
            param="continue_final_message",
        )
    for key in kwargs:
        if key in RESERVED:
            raise bad_request(
                f"chat_template_kwargs.{key}: set by the server (or by its own request field), "
                "not through chat_template_kwargs.",
                param=f"chat_template_kwargs.{key}",
            )
        if key not in template_variables(template):
            raise bad_request(
                f"chat_template_kwargs.{key}: this stage's chat template does not use '{key}'.",
                param=f"chat_template_kwargs.{key}",
            )
    return {
        **kwargs,
        "add_generation_prompt": request.add_generation_prompt and not continues,
        "continue_final_message": continues,
    }


@functools.lru_cache(maxsize=32)
def template_variables(template: str) -> frozenset[str]:
    """The variables a Jinja chat template reads but does not set (vLLM resolves the same set)."""
    import jinja2
    import jinja2.meta
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    try:
        return frozenset(jinja2.meta.find_undeclared_variables(env.parse(template)))
    except jinja2.TemplateSyntaxError:
        return frozenset()


def render_error(exc: Exception, options: dict[str, Any]):
    """A template's refusal to render with the asked options as a 400 (say, a template that rewrites
    the final message, so it cannot be continued)."""
    field = "continue_final_message" if options.get("continue_final_message") else "chat_template_kwargs"
    return bad_request(
        f"{field}: the stage's chat template cannot render this: {str(exc).splitlines()[0]}", param=field
    )
