"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server import metrics

router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "Warming up, failed to start, or degraded", "content": {
    "application/json": {"schema": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string", "enum": ["warming_up", "failed", "degraded"]}}}}}}})
async def ready(request: Request):
    pool = request.app.state.service.pool
    engines = [{"model": model, "speculative": method or "off"} for model, method in pool.engines()]
    # An engine that depends on something outside this process (a remote server) says what is wrong
    # with it; the other stages keep serving, but the server is not ready: a load balancer should know.
    missing = [{"model": model, "speculative": method or "off", "error": problem}
               for (model, method), engine in pool.engines().items()
               if (problem := getattr(engine, "problem", lambda: None)()) is not None]
    # Engines that died: restarting (with backoff), or left down after a crash loop (server/supervisor.py).
    rewards = getattr(request.app.state.service, "rewards", None)
    down = pool.down() + (rewards.down() if rewards is not None else [])
    if pool.ready and (missing or down):
        return JSONResponse({"status": "degraded", "missing": missing, "down": down, "engines": engines},
                            status_code=503)
    if pool.ready:
        return {"status": "ready", "engines": engines}
    failure = getattr(request.app.state, "startup_error", None)
    return JSONResponse({"status": "failed" if failure else "warming_up", "error": failure, "engines": engines},
                        status_code=503)


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics(request: Request):
    for (model, method), engine in request.app.state.service.pool.engines().items():
        metrics.ENGINE_REQUESTS.labels(model, method or "off").set(engine.stats().running_requests)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
