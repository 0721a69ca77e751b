"""The FastAPI application: wires settings, engine pool, service, store, routers and the UI.

`create_app` takes its parts explicitly (tests pass a pool of scripted engines); `build_app` makes
the real parts from settings. Engines start in the background after the server is up, so `/health`
answers at once and `/ready` turns 200 when every engine is warm.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server import body_limit
from server.body_limit import BodyLimitMiddleware, BodyTooLarge
from server.contract import MethodNotAllowedMiddleware, openapi_schema
from server.errors import APIError, from_store_error, from_validation_errors
from server.internal_errors import InternalErrorMiddleware
from server.limits import Limiter
from server.pool import SPARE_LORA_SLOTS, EnginePool, engine_factory
from server.registry import load_registry
from server.rewards import RewardService
from server.routes import admin, branches, health, openai, tokenize, ws
from server.routes import responses as responses_routes
from server.routes import rewards as rewards_routes
from server.serving import StageService
from server.settings import Settings
from server.store import Store, StoreError

log = logging.getLogger(__name__)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as an OpenAI error body with the right status."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    # The store refusing a rating (unknown response or item: 404; invalid: 400): routes let it rise.
    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError):
        error = from_store_error(exc)
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return JSONResponse(body_limit.error_body(exc.limit), status_code=413, headers={"Connection": "close"})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(from_validation_errors(exc.errors()).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(
            APIError(exc.status_code, str(exc.detail), type=kind, code=code).body(),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )


def create_app(
    settings: Settings,
    pool: EnginePool,
    *,
    store=None,
    with_ui: bool = True,
    rewards: RewardService | None = None,
    freeze_when_ready: bool = False,
) -> FastAPI:
    rewards = rewards or RewardService(pool.registry)  # the registry's reward models, each on its own engine
    service = StageService(
        pool=pool,
        store=store,
        log_prompts=settings.log_prompts,
        allow_lossy_speculation=settings.allow_lossy_speculation,
        limiter=Limiter(settings.limits),
        rewards=rewards,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        starting = asyncio.create_task(_start_engines(app, pool, rewards, freeze_when_ready))
        try:
            yield
        finally:
            starting.cancel()
            await pool.shutdown()
            await rewards.shutdown()
            if store is not None:
                store.close()

    app = FastAPI(title="stagechat", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.service = service
    app.state.store = store
    app.state.startup_error = None
    install_error_handlers(app)
    # The contract (server/contract.py): the spec says what the server really answers, and a known
    # path with an unserved method gets 405. The body limit is outermost: nothing reads past it.
    app.openapi = lambda: openapi_schema(app)
    app.add_middleware(MethodNotAllowedMiddleware, routes_of=lambda: app.router.routes)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # Outermost of ours (inside Starlette's plain-text ServerErrorMiddleware): whatever fails anywhere
    # below, routes or middleware, leaves as an OpenAI error body with a request id (server/internal_errors.py).
    app.add_middleware(InternalErrorMiddleware)
    app.include_router(health.router)
    app.include_router(openai.router)
    app.include_router(tokenize.router)
    app.include_router(branches.router)
    app.include_router(admin.router)
    app.include_router(rewards_routes.router)
    app.include_router(responses_routes.router)  # OpenAI Responses API (stored responses: server/responses_api.py)
    app.include_router(ws.router)  # before the UI: its mount at / would catch /v1/ws
    if store is not None:
        from server.arena import arena_for
        from server.routes import arena, conversations, feedback, leaderboard
        from server.routes import raters as raters_routes  # a rater's data: download, delete

        app.include_router(conversations.router)  # saved conversations and share links (server/conversations.py)
        app.include_router(conversations.pages)  # /shared/{id}: before the UI's mount at /
        app.include_router(feedback.router)
        app.include_router(raters_routes.router)
        app.include_router(leaderboard.router)
        app.state.arena = arena_for(service)  # the blind arena (server/arena.py), shared with the UI
        app.include_router(arena.router)
    if with_ui:
        from ui.app import mount_ui

        mount_ui(app, service)
    return app


async def _start_engines(app: FastAPI, pool: EnginePool, rewards: RewardService, freeze: bool) -> None:
    try:
        # Chat engines first: chat is served as soon as they are warm, while the reward engines start
        # (`/ready` waits for both and names what is still starting).
        await pool.start()
        await rewards.start()
        if freeze:
            freeze_heap()
        log.info("all engines warm: ready")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # /ready reports it; the process stays up so the error is visible
        log.exception("engines failed to start")
        app.state.startup_error = f"{type(exc).__name__}: {exc}"


def freeze_heap() -> None:
    """Move everything alive once the engines are warm (the imported libraries, the engines'
    clients, the UI) out of the garbage collector's reach, as vLLM's own server does. Otherwise
    every full collection walks that heap while every stream waits: in a warm server (tiny
    checkpoint, no UI) 789k tracked objects, 363 ms per full collection; frozen, 1.7 ms.

    The collection before the freeze is the one pause it costs, once, at start-up. Process-wide, so
    only the real server does it (`build_app`), not apps made in tests."""
    gc.collect()
    gc.freeze()


def build_app(settings: Settings, *, max_live_engines: int = 2, with_ui: bool = True) -> FastAPI:
    """The real application: vLLM engines for the registry, the store from the database URL."""
    registry = load_registry(settings.registry_path, data_dir=settings.data_dir)
    spare = int(os.environ.get("STAGECHAT_SPARE_LORA_SLOTS", SPARE_LORA_SLOTS))  # room for reloaded adapters
    pool = EnginePool(registry, engine_factory, max_live_engines=max_live_engines, spare_lora_slots=spare)
    store = Store(settings.resolved_database_url)
    return create_app(settings, pool, store=store, with_ui=with_ui, freeze_when_ready=True)
