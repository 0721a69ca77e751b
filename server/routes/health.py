"""Liveness, readiness and Prometheus metrics.

`/ready` is 200 only when every engine is warm and serving and the store's database answers; an
engine that died (restarting, or left down after a crash loop), a remote engine that is unreachable
or a database that does not answer within `STORE_PROBE_SECONDS` make it a 503 "degraded" naming them.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server import metrics

router = APIRouter()

# The longest `/ready` waits for the database to answer `SELECT 1`.
STORE_PROBE_SECONDS = 2.0


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={
        503: {
            "description": "Warming up, failed to start, or degraded",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["status"],
                        "properties": {"status": {"type": "string", "enum": ["warming_up", "failed", "degraded"]}},
                    }
                }
            },
        }
    },
)
async def ready(request: Request):
    pool = request.app.state.service.pool
    engines = [{"model": model, "speculative": method or "off"} for model, method in pool.engines()]
    # An engine that depends on something outside this process (a remote server) says what is wrong
    # with it; the other stages keep serving, but the server is not ready: a load balancer should know.
    missing = [
        {"model": model, "speculative": method or "off", "error": problem}
        for (model, method), engine in pool.engines().items()
        if (problem := getattr(engine, "problem", lambda: None)()) is not None
    ]
    # Engines that died: restarting (with backoff), or left down after a crash loop (server/supervisor.py).
    rewards = getattr(request.app.state.service, "rewards", None)
    down = pool.down() + (rewards.down() if rewards is not None else [])
    store_error = await _store_problem(request.app)
    warm = pool.ready and (rewards is None or rewards.ready)
    if warm and (missing or down or store_error):
        body = {"status": "degraded", "missing": missing, "down": down, "engines": engines}
        if store_error:
            body["store"] = {"error": store_error}
        return JSONResponse(body, status_code=503)
    if warm:
        return {"status": "ready", "engines": engines}
    failure = getattr(request.app.state, "startup_error", None)
    starting = {"stages": pool.starting(), "reward_models": rewards.starting() if rewards is not None else []}
    return JSONResponse(
        {"status": "failed" if failure else "warming_up", "error": failure, "starting": starting, "engines": engines},
        status_code=503,
    )


async def _store_problem(app) -> str | None:
    """None when the store's database answers; else why not. One probe at a time: a database that
    hangs gets no pile of waiting threads, however often `/ready` is asked."""
    engine = getattr(getattr(app.state, "store", None), "engine", None)
    if engine is None:
        return None
    probe = getattr(app.state, "store_probe", None)
    if probe is None or probe.done():
        probe = app.state.store_probe = asyncio.ensure_future(asyncio.to_thread(_ping, engine))
    try:
        await asyncio.wait_for(asyncio.shield(probe), STORE_PROBE_SECONDS)
    except TimeoutError:
        return f"the database did not answer within {STORE_PROBE_SECONDS:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def _ping(engine) -> None:
    import sqlalchemy as sa

    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics(request: Request):
    for (model, method), engine in request.app.state.service.pool.engines().items():
        metrics.ENGINE_REQUESTS.labels(model, method or "off").set(engine.stats().running_requests)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
