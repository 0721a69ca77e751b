"""The engine pool: which engine serves a (stage, speculative method), started when and for how long.

One engine per distinct (checkpoint, speculative method). Adapter stages ride on the engine of their
root checkpoint with a per-request LoRA adapter, so base, SFT and RLHF share one engine. Every stage's
default variant starts (and warms up) at start-up; other speculative variants start on first use.
At most `max_live_engines` run at once, because engines on a small CPU starve each other: starting
one more evicts the least recently used idle engine, and when none is idle the request gets a 503.
The pool knows engines and adapters, nothing about HTTP or OpenAI types.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.engine import AdapterRef, Engine
from server.errors import APIError, bad_request, not_found
from server.registry import SPECULATIVE_OFF, Registry

log = logging.getLogger(__name__)

# (checkpoint, speculative method name or None); speculative configs are per checkpoint's root stage
EngineKey = tuple[str, str | None]


@dataclass(frozen=True)
class EngineSpec:
    """What it takes to build one engine (plain data, handed to the engine factory)."""

    model: str
    speculative_method: str | None
    speculative_config: dict[str, Any] | None
    max_lora_rank: int | None  # None: no adapter rides on this engine
    max_loras: int
    engine_args: dict[str, Any]


EngineFactory = Callable[[EngineSpec], Engine]


@dataclass(frozen=True)
class Route:
    engine: Engine
    adapter: AdapterRef | None
    speculative_method: str | None


def _lora_rank(adapter_path: str) -> int:
    config = Path(adapter_path) / "adapter_config.json"
    rank = json.loads(config.read_text()).get("r", 8) if config.exists() else 8
    return next(r for r in (8, 16, 32, 64, 128, 256, 512) if r >= rank)


class EnginePool:
    def __init__(self, registry: Registry, factory: EngineFactory, *, max_live_engines: int = 2):
        self.factory = factory
        self.max_live_engines = max_live_engines
        self._engines: dict[EngineKey, Engine] = {}
        self._last_used: dict[EngineKey, float] = {}
        self._lock = asyncio.Lock()
        self.ready = False
        self.set_registry(registry)

    def set_registry(self, registry: Registry) -> None:
        """Adopt a (re)loaded registry. New adapter stages on running engines serve at once."""
        self.registry = registry
        self._adapters = {
            name: AdapterRef(name=name, path=stage.adapter, int_id=i + 1)
            for i, (name, stage) in enumerate(registry.stages.items())
            if stage.adapter is not None
        }

    # -- routing ---------------------------------------------------------------------------------

    def resolve(self, stage: str, speculative: str | None) -> tuple[EngineKey, AdapterRef | None]:
        """Validate a (stage, speculative) choice and name the engine that serves it."""
        if stage not in self.registry.stages:
            raise not_found(f"The model '{stage}' does not exist. Stages: {', '.join(self.registry.stages)}.",
                            param="model", code="model_not_found")
        methods = self.registry.speculative_methods(stage)
        method = speculative if speculative is not None else self.registry.stages[stage].default_speculative
        if method != SPECULATIVE_OFF and method not in methods:
            offered = ", ".join([SPECULATIVE_OFF, *methods])
            raise bad_request(f"Stage '{stage}' offers no speculative method '{method}'. Offered: {offered}.",
                              param="speculative", code="unknown_speculative_method")
        root = self.registry.root(stage)
        key = (self.registry.stages[root].model, None if method == SPECULATIVE_OFF else method)
        return key, self._adapters.get(stage)

    async def route(self, stage: str, speculative: str | None = None) -> Route:
        key, adapter = self.resolve(stage, speculative)
        engine = self._engines.get(key) or await self._start(key, self._spec_for(stage, key))
        self._last_used[key] = time.monotonic()
        return Route(engine, adapter, key[1])

    def _spec_for(self, stage: str, key: EngineKey) -> EngineSpec:
        model, method = key
        adapters = [a for s, a in self._adapters.items() if self.registry.stages[self.registry.root(s)].model == model]
        config = self.registry.speculative_methods(stage)[method] if method else None
        return EngineSpec(
            model=model,
            speculative_method=method,
            speculative_config=config,
            max_lora_rank=max((_lora_rank(a.path) for a in adapters), default=None),
            # One slot more than adapters, left empty: vLLM's CPU LoRA kernels read the last slot for
            # requests without an adapter, so a base request batched with an adapter request would
            # get that adapter's delta (vllm-project/vllm PR #49656). An empty last slot adds zero.
            max_loras=len(adapters) + 1,
            engine_args=dict(self.registry.engine),
        )

    # -- life cycle ------------------------------------------------------------------------------

    def default_keys(self) -> dict[EngineKey, str]:
        """The engine each stage's default variant needs, with one stage that needs it."""
        keys: dict[EngineKey, str] = {}
        for name in self.registry.stages:
            keys.setdefault(self.resolve(name, None)[0], name)
        return keys

    async def start(self) -> None:
        """Start and warm every default engine; then the pool is ready."""
        for key, stage in self.default_keys().items():
            if key not in self._engines:
                await self._start(key, self._spec_for(stage, key))
        self.ready = True

    async def _start(self, key: EngineKey, spec: EngineSpec) -> Engine:
        async with self._lock:  # one engine starts at a time: two starting at once starve each other
            if key in self._engines:
                return self._engines[key]
            if len(self._engines) >= self.max_live_engines:
                await self._evict_one()
            log.info("starting engine %s (speculative: %s)", spec.model, spec.speculative_method or "off")
            began = time.monotonic()
            engine = self.factory(spec)
            await engine.start()
            await engine.warm_up([a for a in self._adapters.values() if self._serves(key, a)])
            log.info("engine %s ready in %.1f s", spec.model, time.monotonic() - began)
            self._engines[key] = engine
            self._last_used[key] = time.monotonic()
            return engine

    def _serves(self, key: EngineKey, adapter: AdapterRef) -> bool:
        return self.registry.stages[self.registry.root(adapter.name)].model == key[0]

    async def _evict_one(self) -> None:
        idle = [k for k, e in self._engines.items() if e.stats().running_requests == 0]
        if not idle:
            raise APIError(503, f"All {self.max_live_engines} engines are busy; retry shortly.",
                           type="service_unavailable", code="engines_busy")
        victim = min(idle, key=lambda k: self._last_used.get(k, 0.0))
        log.info("evicting idle engine %s (speculative: %s)", *victim)
        engine = self._engines.pop(victim)
        await engine.shutdown()

    def engines(self) -> dict[EngineKey, Engine]:
        return dict(self._engines)

    def running_requests(self) -> int:
        return sum(e.stats().running_requests for e in self._engines.values())

    async def shutdown(self) -> None:
        self.ready = False
        for engine in self._engines.values():
            await engine.shutdown()
        self._engines.clear()


def vllm_factory(spec: EngineSpec) -> Engine:
    from server.vllm_engine import VllmEngine

    args = dict(spec.engine_args)
    if spec.max_lora_rank is not None:
        args.setdefault("max_loras", spec.max_loras)
    return VllmEngine(
        spec.model,
        engine_args=args,
        speculative_method=spec.speculative_method,
        speculative_config=spec.speculative_config,
        max_lora_rank=spec.max_lora_rank,
    )
