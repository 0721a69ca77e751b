"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server import metrics

router = APIRouter()


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request):
    pool = request.app.state.service.pool
    engines = [{"model": model, "speculative": method or "off"} for model, method in pool.engines()]
    if pool.ready:
        return {"status": "ready", "engines": engines}
    failure = getattr(request.app.state, "startup_error", None)
    return JSONResponse({"status": "failed" if failure else "warming_up", "error": failure, "engines": engines},
                        status_code=503)


@router.get("/metrics")
async def prometheus_metrics(request: Request):
    for (model, method), engine in request.app.state.service.pool.engines().items():
        metrics.ENGINE_REQUESTS.labels(model, method or "off").set(engine.stats().running_requests)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
