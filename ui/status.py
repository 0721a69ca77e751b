"""The banner at the top of the page while engines start: which stages and reward models are not up yet.

It reads the pool and the reward service the API reads for `/ready`; it knows nothing about tabs.
"""

from __future__ import annotations

import gradio as gr

from server.serving import StageService

POLL_SECONDS = 2.0


def startup_message(service: StageService) -> str | None:
    """What is still starting, in a sentence; None once every engine is up."""
    stages = service.pool.starting() if not service.pool.ready else []
    rewards = service.rewards.starting() if service.rewards is not None else []
    if not stages and not rewards:
        return None
    parts = [f"stages {', '.join(stages)} (chat with them once their engine is warm)"] if stages else []
    parts += [f"reward models {', '.join(rewards)}"] if rewards else []
    return "⏳ **Starting** — engines are warming up: " + "; ".join(parts) + "."


def build(service: StageService) -> None:
    """The banner and the timer that refreshes it, stopping once everything is up."""
    banner = gr.Markdown(visible=False, elem_id="startup-status")
    timer = gr.Timer(POLL_SECONDS)

    def show_what_is_starting():
        message = startup_message(service)
        return gr.update(value=message or "", visible=message is not None), gr.Timer(active=message is not None)

    timer.tick(show_what_is_starting, None, [banner, timer], queue=False, api_visibility="private")
