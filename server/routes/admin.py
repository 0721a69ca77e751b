"""Admin API: `POST /v1/admin/reload` re-reads the registry file and serves what changed, no restart.

Thin: the admin key check (when one is configured), `load_registry` for validation, and
`EnginePool.reload` for the engines. A registry file that does not validate gets a 400 naming the
problem, and the server keeps serving the registry it had. Response: the stages now served, the
ones added and removed, and any engine that had to restart (its adapters outgrew its LoRA slots).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from server.auth import require_admin
from server.errors import APIError, bad_request
from server.registry import RegistryError, load_registry

router = APIRouter()


@router.post("/v1/admin/reload")
async def reload_registry(request: Request) -> dict:
    settings = request.app.state.settings
    require_admin(request, settings)
    pool = request.app.state.service.pool
    try:
        registry = await asyncio.to_thread(load_registry, settings.registry_path, data_dir=settings.data_dir)
    except RegistryError as exc:
        raise bad_request(f"Registry not reloaded: {exc}", code="invalid_registry") from None
    before = set(pool.registry.stages)
    try:  # reward models first: one that cannot start leaves the whole old registry in place
        added_rms = await request.app.state.service.rewards.reload(registry)
    except Exception as exc:
        raise APIError(
            500,
            f"Registry not reloaded: a reward model failed to start: {exc}",
            type="server_error",
            code="reward_model_failed",
        ) from None
    restarted = await pool.reload(registry)
    return {
        "object": "registry.reload",
        "stages": list(registry.stages),
        "added": [s for s in registry.stages if s not in before],
        "removed": sorted(before - set(registry.stages)),
        "restarted_engines": [{"model": model, "speculative": method} for model, method in restarted],
        "reward_models": list(registry.reward_models),
        "added_reward_models": added_rms,
    }
