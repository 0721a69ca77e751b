"""The decoding controls every tab shares, and how their values become a chat request.

Knows the stage list (from `StageService.stages()`) and Gradio components; knows nothing about
streaming or the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from server.protocol import ChatCompletionRequest
from server.serving import StageService
from ui.stream import chat_request

SPEC_DEFAULT = "default"  # the stage's own default method
UI_CLIENT_ID = "ui"  # who rated, in the store, for answers rated in the browser


@dataclass
class Decoding:
    """The shared components; `inputs` is the order `request_for` takes their values in."""

    temperature: gr.Slider
    top_p: gr.Slider
    max_tokens: gr.Slider
    seed: gr.Number
    speculative: gr.Dropdown
    system: gr.Textbox

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [self.temperature, self.top_p, self.max_tokens, self.seed, self.speculative, self.system]


def stage_choices(service: StageService) -> list[tuple[str, str]]:
    return [(f"{s['id']} — {s['description']}" if s["description"] else s["id"], s["id"])
            for s in service.stages()]


def stage_info(service: StageService, stage: str | None) -> dict[str, Any] | None:
    return next((s for s in service.stages() if s["id"] == stage), None)


def describe_stage(service: StageService, stage: str | None) -> str:
    info = stage_info(service, stage)
    if info is None:
        return ""
    lineage = f" — a LoRA adapter on **{info['parent']}**" if info["parent"] else ""
    spec = ", ".join(info["speculative"]) or "none"
    return f"**{info['id']}**: {info['description'] or '(no description)'}{lineage}. Speculative methods: {spec}."


def speculative_choices(service: StageService, stage: str | None = None) -> list[str]:
    """'default', 'off', then the methods of `stage` (of every stage when None)."""
    stages = [s for s in service.stages() if stage is None or s["id"] == stage]
    methods = sorted({m for s in stages for m in s["speculative"]})
    return [SPEC_DEFAULT, "off", *methods]


def build_decoding(service: StageService) -> Decoding:
    with gr.Row():
        temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="temperature", elem_id="decoding-temperature")
        top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top_p", elem_id="decoding-top-p")
        max_tokens = gr.Slider(1, 512, value=64, step=1, label="max tokens", elem_id="decoding-max-tokens")
        seed = gr.Number(value=-1, precision=0, minimum=-1, label="seed (-1: random)", elem_id="decoding-seed")
        speculative = gr.Dropdown(speculative_choices(service), value=SPEC_DEFAULT, label="speculative decoding",
                                  elem_id="decoding-speculative")
    system = gr.Textbox(label="system prompt", placeholder="optional", lines=1, elem_id="decoding-system")
    return Decoding(temperature, top_p, max_tokens, seed, speculative, system)


def request_for(service: StageService, stage: str, conversation: list[dict[str, str]], temperature, top_p,
                max_tokens, seed, speculative, system) -> ChatCompletionRequest:
    """The request for `stage` from the control values; a method the stage lacks means its default."""
    info = stage_info(service, stage)
    method = None
    if speculative == "off" or (info and speculative in info["speculative"]):
        method = speculative
    messages = ([{"role": "system", "content": system}] if system and system.strip() else []) + conversation
    return chat_request(stage, messages, temperature=temperature, top_p=top_p,
                        max_tokens=int(max_tokens) if max_tokens else None,
                        seed=int(seed) if seed is not None and seed >= 0 else None, speculative=method)
