"""Who is rating in the browser: Gradio's login, with an API key as the password.

With API keys configured (`STAGECHAT_API_KEYS`, and the admin key), the UI asks for a name and a key
(Gradio's own login page) and stores each person's ratings under the same client id the API gives
that key (`server.auth.client_id_for`), so a rater lists and deletes their browser ratings through
the API with their key. Gradio keeps only the user name of a session, so the name is bound to the
key it first logged in with; another key under a taken name is refused. Without keys the UI is open
and its ratings carry the rater id `ui`.

Knows Gradio's `auth` callable and `gr.Request`; knows nothing about the store.
"""

from __future__ import annotations

import hmac
import threading

import gradio as gr

from server.auth import client_id_for
from server.settings import Settings
from ui.controls import UI_CLIENT_ID

MESSAGE = (
    "This stagechat server needs an API key. Name: how you want to be known here. "
    "Password: your API key (your ratings are stored under that key's client id)."
)


class Login:
    """The `auth` callable for `gr.mount_gradio_app`, and the rater id of a request."""

    def __init__(self, settings: Settings):
        self.keys = set(settings.api_keys) | ({settings.admin_key} if settings.admin_key else set())
        self.admin = client_id_for(settings.admin_key) if settings.admin_key else None  # sees every saved chat
        self._raters: dict[str, str] = {}  # user name -> client id of the key it logged in with
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def __call__(self, username: str, password: str) -> bool:
        if not username or not any(hmac.compare_digest(password.encode(), k.encode()) for k in self.keys):
            return False
        client_id = client_id_for(password)
        with self._lock:
            bound = self._raters.setdefault(username, client_id)
        return bound == client_id

    def rater(self, request: gr.Request | None) -> str:
        """The client id ratings from this browser session are stored under."""
        if not self.enabled:
            return UI_CLIENT_ID
        username = getattr(request, "username", None)
        rater = self._raters.get(username) if username else None
        if rater is None:  # cannot happen behind Gradio's login; refuse rather than store as someone else
            raise gr.Error("Log in again: this session has no API key.")
        return rater
