"""The decoding controls every tab shares, and how their values become a chat request.

The sampler's knobs (temperature, top_p, top_k, min_p, and the repetition, presence and frequency
penalties: vLLM's sampling parameters) with a few named presets that set them together. Knows the
stage list (from `StageService.stages()`) and Gradio components; knows nothing about streaming or
the store.
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
    top_k: gr.Slider
    min_p: gr.Slider
    repetition_penalty: gr.Slider
    presence_penalty: gr.Slider
    frequency_penalty: gr.Slider
    preset: gr.Dropdown

    @property
    def inputs(self) -> list[gr.components.Component]:
        return [
            self.temperature,
            self.top_p,
            self.max_tokens,
            self.seed,
            self.speculative,
            self.system,
            self.top_k,
            self.min_p,
            self.repetition_penalty,
            self.presence_penalty,
            self.frequency_penalty,
        ]

    @property
    def sampler(self) -> list[gr.components.Component]:
        """The components a preset sets, in `PRESETS` value order."""
        return [
            self.temperature,
            self.top_p,
            self.top_k,
            self.min_p,
            self.repetition_penalty,
            self.presence_penalty,
            self.frequency_penalty,
        ]


# name -> (temperature, top_p, top_k, min_p, repetition, presence, frequency penalty)
PRESETS: dict[str, tuple[float, float, int, float, float, float, float]] = {
    "the model as it is (T=1, nothing cut)": (1.0, 1.0, 0, 0.0, 1.0, 0.0, 0.0),
    "greedy (T=0)": (0.0, 1.0, 0, 0.0, 1.0, 0.0, 0.0),
    "focused (T=0.7, top_p 0.9)": (0.7, 0.9, 0, 0.0, 1.0, 0.0, 0.0),
    "top-k 5": (1.0, 1.0, 5, 0.0, 1.0, 0.0, 0.0),
    "min-p 0.1 (T=1.2)": (1.2, 1.0, 0, 0.1, 1.0, 0.0, 0.0),
    "creative (T=1.3, top_p 0.95)": (1.3, 0.95, 0, 0.0, 1.0, 0.0, 0.0),
    "no repeats (penalties)": (0.8, 1.0, 0, 0.0, 1.2, 0.3, 0.5),
}
CUSTOM = "custom"


def preset_values(name: str) -> list[Any]:
    """The slider values of a preset (an unknown name or `custom` leaves them: gr.skip())."""
    values = PRESETS.get(name)
    return [gr.skip()] * 7 if values is None else list(values)


def stage_choices(service: StageService) -> list[tuple[str, str]]:
    return [(f"{s['id']} — {s['description']}" if s["description"] else s["id"], s["id"]) for s in service.stages()]


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
        speculative = gr.Dropdown(
            speculative_choices(service),
            value=SPEC_DEFAULT,
            label="speculative decoding",
            elem_id="decoding-speculative",
        )
    with gr.Accordion("Sampler", open=False):
        with gr.Row():
            preset = gr.Dropdown([CUSTOM, *PRESETS], value=CUSTOM, label="preset", elem_id="decoding-preset")
            top_k = gr.Slider(0, 100, value=0, step=1, label="top_k (0: off)", elem_id="decoding-top-k")
            min_p = gr.Slider(0, 1, value=0.0, step=0.01, label="min_p", elem_id="decoding-min-p")
        with gr.Row():
            repetition = gr.Slider(
                0.5, 2, value=1.0, step=0.05, label="repetition penalty", elem_id="decoding-repetition"
            )
            presence = gr.Slider(-2, 2, value=0.0, step=0.1, label="presence penalty", elem_id="decoding-presence")
            frequency = gr.Slider(-2, 2, value=0.0, step=0.1, label="frequency penalty", elem_id="decoding-frequency")
    system = gr.Textbox(label="system prompt", placeholder="optional", lines=1, elem_id="decoding-system")
    decoding = Decoding(
        temperature, top_p, max_tokens, seed, speculative, system, top_k, min_p, repetition, presence, frequency, preset
    )
    preset.change(preset_values, preset, decoding.sampler, queue=False)
    return decoding


def sampler_fields(
    top_k=0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0
) -> dict[str, Any]:
    """The request fields of the sampler sliders; defaults (off) are left out, so a stage's own apply."""
    fields = {
        "top_k": int(top_k) if top_k else None,
        "min_p": min_p or None,
        "repetition_penalty": repetition_penalty if repetition_penalty not in (None, 1.0) else None,
        "presence_penalty": presence_penalty or 0.0,
        "frequency_penalty": frequency_penalty or 0.0,
    }
    return {k: v for k, v in fields.items() if v is not None}


def request_for(
    service: StageService,
    stage: str,
    conversation: list[dict[str, str]],
    temperature,
    top_p,
    max_tokens,
    seed,
    speculative,
    system,
    *sampler,
) -> ChatCompletionRequest:
    """The request for `stage` from the control values; a method the stage lacks means its default."""
    messages = ([{"role": "system", "content": system}] if system and system.strip() else []) + conversation
    return chat_request(
        stage, messages, **decoding_fields(service, stage, temperature, top_p, max_tokens, seed, speculative, *sampler)
    )


def decoding_fields(
    service: StageService, stage: str, temperature, top_p, max_tokens, seed, speculative, *sampler
) -> dict[str, Any]:
    """The request fields the controls set (chat or completions alike); a speculative method the
    stage lacks means its default."""
    info = stage_info(service, stage)
    method = None
    if speculative == "off" or (info and speculative in info["speculative"]):
        method = speculative
    return {
        "temperature": temperature,
        "top_p": top_p,
        "max_tokens": int(max_tokens) if max_tokens else None,
        "seed": int(seed) if seed is not None and seed >= 0 else None,
        "speculative": method,
        **sampler_fields(*sampler),
    }
