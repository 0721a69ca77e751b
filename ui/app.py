"""The browser UI: one Gradio Blocks (Chat, Compare, Notebook, Arena, Token view, Leaderboard) mounted at `/` of the
FastAPI app; behind Gradio's login (an API key as the password, see `ui/login.py`) whenever the server
has API keys.

Every tab calls the app's `StageService` in-process — the service behind the HTTP API and the
WebSocket — so the UI behaves exactly like the API and talks no private protocol. Building the
Blocks happens in `mount_ui`, never at import. The UI's routes live under `/` after the API's, so
`/v1/...`, `/health` and friends must be registered before `mount_ui` is called.
"""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from server.serving import StageService
from server.settings import Settings
from ui.login import MESSAGE, Login

CSS = """
.token-view span.tok { padding: 1px 0; border-radius: 3px; white-space: pre-wrap; cursor: help; }
"""


def build_ui(service: StageService, login: Login | None = None) -> gr.Blocks:
    from ui import arena, chat, compare, controls, conversations, leaderboard, notebook, status, tokens

    login = login or Login(Settings())

    with gr.Blocks(title="stagechat") as blocks:
        gr.Markdown("## stagechat — the training stages of one LLM, side by side")
        status.build(service)
        history = gr.State([])  # every finished answer of this browser session, for the token view
        with gr.Accordion("Decoding", open=True):
            decoding = controls.build_decoding(service)
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"), gr.Row():
                with gr.Column(scale=1, min_width=240):  # saved conversations (ui/conversations.py)
                    sidebar = conversations.build()
                with gr.Column(scale=4):
                    chat_stage = chat.build(service, decoding, history, login, sidebar)
            with gr.Tab("Compare", id="compare"):
                compare_stages = compare.build(service, decoding, history, login)
            with gr.Tab("Notebook", id="notebook"):
                notebook_stage = notebook.build(service, decoding, history, login)
            with gr.Tab("Arena", id="arena"):
                arena.build(service, login)
            with gr.Tab("Token view", id="tokens"):
                tokens.build(history, service, decoding)
            with gr.Tab("Leaderboard", id="leaderboard") as board_tab:
                _, refresh = leaderboard.build(service)
            board_tab.select(**refresh)
        # Stages can be added while serving (`POST /v1/admin/reload`): every page load lists the current ones.
        blocks.load(
            lambda: [gr.update(choices=controls.stage_choices(service))] * 3,
            None,
            [chat_stage, compare_stages, notebook_stage],
            queue=False,
        )
    return blocks


def mount_ui(app: FastAPI, service: StageService) -> None:
    settings: Settings = getattr(app.state, "settings", None) or Settings()
    login = Login(settings)
    auth = dict(auth=login, auth_message=MESSAGE) if login.enabled else {}
    # footer_links=[] and no run history: the page is a tool, and runs already live in the store.
    gr.mount_gradio_app(
        app, build_ui(service, login), path="/", footer_links=[], run_history=False, css=CSS, ssr_mode=False, **auth
    )
