"""The engine pool: which engine serves a (stage, speculative method), started when and for how long.

One engine per distinct (checkpoint, speculative method). Adapter stages ride on the engine of their
root checkpoint with a per-request LoRA adapter, so base, SFT and RLHF share one engine. Every stage's
default variant starts (and warms up) at start-up; other speculative variants start on first use.
At most `max_live_engines` run at once, because engines on a small CPU starve each other: starting
one more evicts the least recently used idle engine, and when none is idle the request gets a 503.
`reload` adopts a changed registry while serving: a new adapter stage rides on its running engine
at once (each engine starts with `spare_lora_slots` free LoRA slots for that), and an engine whose
adapters outgrow its slots or rank restarts. An engine that dies (noticed by a watcher polling
`dead()`, or by a stream it broke: `engine_died`) is restarted by the pool's `Supervisor` with
backoff; meanwhile its stages get a 503 naming them, and the other engines keep serving. The pool knows
engines and adapters, nothing about HTTP or OpenAI types.
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

from server import metrics
from server.engine import AdapterRef, Engine
from server.errors import APIError, bad_request, not_found
from server.registry import SPECULATIVE_OFF, Registry, RemoteSpec
from server.supervisor import Outage, Supervisor, unavailable

log = logging.getLogger(__name__)

# (checkpoint, speculative method name or None); speculative configs are per checkpoint's root stage
EngineKey = tuple[str, str | None]

# The server's default LoRA slots beyond the registry's adapters (`STAGECHAT_SPARE_LORA_SLOTS`), so
# `reload` can add adapter stages (say, the next RLHF round) to a running engine without restarting
# it; an adapter beyond the spare slots restarts that engine. Each slot costs rank × width memory.
SPARE_LORA_SLOTS = 2


@dataclass(frozen=True)
class EngineSpec:
    """What it takes to build one engine (plain data, handed to the engine factory)."""

    model: str
    speculative_method: str | None
    speculative_config: dict[str, Any] | None
    max_lora_rank: int | None  # None: no adapter rides on this engine
    max_loras: int
    engine_args: dict[str, Any]
    remote: RemoteSpec | None = None  # served by this remote server (`RemoteEngine`), not in process


EngineFactory = Callable[[EngineSpec], Engine]


@dataclass(frozen=True)
class Route:
    engine: Engine
    adapter: AdapterRef | None
    speculative_method: str | None


def lora_rank(adapter_path: str) -> int:
    config = Path(adapter_path) / "adapter_config.json"
    rank = json.loads(config.read_text()).get("r", 8) if config.exists() else 8
    return next(r for r in (8, 16, 32, 64, 128, 256, 512) if r >= rank)


class EnginePool:
    def __init__(
        self, registry: Registry, factory: EngineFactory, *, max_live_engines: int = 2, spare_lora_slots: int = 0
    ):
        self.factory = factory
        self.max_live_engines = max_live_engines
        self.spare_lora_slots = spare_lora_slots
        self._engines: dict[EngineKey, Engine] = {}
        self._specs: dict[EngineKey, EngineSpec] = {}  # what each live engine was started with
        self._adapters: dict[str, AdapterRef] = {}
        self._last_used: dict[EngineKey, float] = {}
        self._lock = asyncio.Lock()
        self.ready = False
        self.supervisor = Supervisor()
        self._dead: dict[int, EngineKey] = {}  # id(dead engine) -> its key, for streams that report it late
        self.set_registry(registry)

    def set_registry(self, registry: Registry) -> None:
        """Adopt a (re)loaded registry. New adapter stages on running engines serve at once."""
        self.registry = registry
        # vLLM caches a loaded adapter by its int id: an unchanged adapter keeps its id across
        # reloads, a new or moved one gets a fresh id (never a removed one's, which may be cached).
        old = self._adapters
        next_id = max((a.int_id for a in old.values()), default=0) + 1
        self._adapters = {}
        for name, stage in registry.stages.items():
            if stage.adapter is None:
                continue
            if name in old and old[name].path == stage.adapter:
                self._adapters[name] = old[name]
            else:
                self._adapters[name] = AdapterRef(name=name, path=stage.adapter, int_id=next_id)
                next_id += 1

    async def reload(self, registry: Registry) -> list[EngineKey]:
        """Adopt a changed registry while serving; returns the engines that had to restart.

        New adapter stages ride on their running engine at once (warmed up first). An engine restarts
        only when its adapters no longer fit: more than its LoRA slots, a larger rank, or LoRA off."""
        added = [n for n in registry.stages if n not in self.registry.stages]
        self.set_registry(registry)
        restarted = []
        for key, engine in list(self._engines.items()):
            serving = [a for a in self._adapters.values() if self._serves(key, a)]
            started = self._specs.get(key)
            if started is not None and not _fits(started, serving):
                stage = next(s for s in registry.stages if self.registry.checkpoint(registry.root(s)) == key[0])
                spec = self._spec_for(stage, key)
                if _fits(spec, serving):
                    await self._restart(key, spec)
                    restarted.append(key)
                    continue
                # The registry's `engine:` pins max_loras / max_lora_rank: a restart would not help.
                log.warning(
                    "engine %s: %d adapters exceed the LoRA slots or rank its `engine:` arguments "
                    "pin; remove max_loras / max_lora_rank there to let the pool size them",
                    key[0],
                    len(serving),
                )
            await engine.warm_up([a for a in serving if a.name in added])
        return restarted

    # -- routing ---------------------------------------------------------------------------------

    def resolve(self, stage: str, speculative: str | None) -> tuple[EngineKey, AdapterRef | None]:
        """Validate a (stage, speculative) choice and name the engine that serves it."""
        if stage not in self.registry.stages:
            raise not_found(
                f"The model '{stage}' does not exist. Stages: {', '.join(self.registry.stages)}.",
                param="model",
                code="model_not_found",
            )
        methods = self.registry.speculative_methods(stage)
        method = speculative if speculative is not None else self.registry.stages[stage].default_speculative
        if method != SPECULATIVE_OFF and method not in methods:
            offered = ", ".join([SPECULATIVE_OFF, *methods])
            raise bad_request(
                f"Stage '{stage}' offers no speculative method '{method}'. Offered: {offered}.",
                param="speculative",
                code="unknown_speculative_method",
            )
        root = self.registry.root(stage)
        key = (self.registry.checkpoint(root), None if method == SPECULATIVE_OFF else method)
        return key, self._adapters.get(stage)

    async def route(self, stage: str, speculative: str | None = None) -> Route:
        key, adapter = self.resolve(stage, speculative)
        if (outage := self.supervisor.outage(key)) is not None:
            raise unavailable(f"Stage '{stage}'", outage)
        engine = self._engines.get(key) or await self._start(key, self._spec_for(stage, key))
        self._last_used[key] = time.monotonic()
        return Route(engine, adapter, key[1])

    def _spec_for(self, stage: str, key: EngineKey) -> EngineSpec:
        model, method = key
        adapters = [a for s, a in self._adapters.items() if self.registry.checkpoint(self.registry.root(s)) == model]
        config = self.registry.speculative_methods(stage)[method] if method else None
        return EngineSpec(
            model=model,
            speculative_method=method,
            speculative_config=config,
            max_lora_rank=max((lora_rank(a.path) for a in adapters), default=None),
            # One slot more than adapters, left empty: vLLM's CPU LoRA kernels read the last slot for
            # requests without an adapter, so a base request batched with an adapter request would
            # get that adapter's delta (vllm-project/vllm PR #49656). An empty last slot adds zero.
            # Spare slots let a reload add adapters without restarting the engine (see `reload`).
            max_loras=len(adapters) + self.spare_lora_slots + 1,
            engine_args=dict(self.registry.engine),
            remote=self.registry.remote_for(self.registry.root(stage), method),
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
        self.supervisor.watch(self.engines, self.engine_died)

    # -- healing ---------------------------------------------------------------------------------

    def engine_died(self, engine: Engine, reason: str) -> Outage | None:
        """`engine` died: take it out of service now and have the supervisor restart it; returns the
        outage (None when the engine is no longer the pool's: already replaced).

        A stream it broke and the watcher may both report it: the first report counts."""
        key = next((k for k, e in self._engines.items() if e is engine), None)
        if key is None or not self.ready:  # not ours any more, or the pool is shutting down
            return self._outage_of(engine)
        del self._engines[key]
        spec = self._specs.pop(key, None)

        async def restart() -> None:
            await self._start(key, self._fresh_spec(key, spec))

        self.supervisor.died(key, engine_label(key), reason, engine, restart)
        self._dead[id(engine)] = key
        return self.supervisor.outage(key)

    def _outage_of(self, engine: Engine) -> Outage | None:
        key = self._dead.get(id(engine))
        return self.supervisor.outage(key) if key is not None else None

    def _fresh_spec(self, key: EngineKey, old: EngineSpec | None) -> EngineSpec:
        """The spec to restart `key` with, from today's registry (a reload may have come meanwhile)."""
        for stage in self.registry.stages:
            if self.registry.checkpoint(self.registry.root(stage)) != key[0]:
                continue
            if key[1] is None or key[1] in self.registry.speculative_methods(stage):
                return self._spec_for(stage, key)
        if old is None:
            raise RuntimeError(f"no stage of the registry is served by engine {engine_label(key)} any more")
        return old

    def starting(self) -> list[str]:
        """The stages whose default engine is not up yet (all of them before `start`)."""
        live = self.engines()
        return [name for name in self.registry.stages if self.resolve(name, None)[0] not in live]

    def down(self) -> list[dict[str, Any]]:
        """The engines that are down (restarting, or stopped after a crash loop), with their stages."""
        registry = self.registry
        return [
            {
                **outage.describe(),
                "model": key[0],
                "speculative": key[1] or "off",
                "stages": [s for s in registry.stages if registry.checkpoint(registry.root(s)) == key[0]],
            }
            for key, outage in self.supervisor.down.items()
        ]

    async def _start(self, key: EngineKey, spec: EngineSpec) -> Engine:
        async with self._lock:  # one engine starts at a time: two starting at once starve each other
            if key in self._engines:
                return self._engines[key]
            if len(self._local_engines()) >= self.max_live_engines and spec.remote is None:
                await self._evict_one()
            log.info("starting engine %s (speculative: %s)", spec.model, spec.speculative_method or "off")
            began = time.monotonic()
            engine = self.factory(spec)
            await engine.start()
            await engine.warm_up([a for a in self._adapters.values() if self._serves(key, a)])
            log.info("engine %s ready in %.1f s", spec.model, time.monotonic() - began)
            self._engines[key] = engine
            self._specs[key] = spec
            self._last_used[key] = time.monotonic()
            metrics.ENGINE_RESTARTS.labels(engine_label(key))  # listed in /metrics from the start, at 0
            return engine

    async def _restart(self, key: EngineKey, spec: EngineSpec, drain_seconds: float = 30.0) -> None:
        """Replace a live engine with one built from `spec`; requests arriving meanwhile wait for it."""
        async with self._lock:
            old = self._engines.get(key)
            if old is None:  # it died meanwhile: its supervisor restarts it, with today's spec
                return
            deadline = time.monotonic() + drain_seconds
            while old.stats().running_requests and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # let running answers finish; later ones are aborted
            if self._engines.get(key) is not old:  # it died while draining
                return
            del self._engines[key]
            self._specs.pop(key, None)
            log.info("restarting engine %s: its adapters outgrew its LoRA slots", spec.model)
            await old.shutdown()
        await self._start(key, spec)

    def _serves(self, key: EngineKey, adapter: AdapterRef) -> bool:
        return self.registry.checkpoint(self.registry.root(adapter.name)) == key[0]

    async def _evict_one(self) -> None:
        idle = [k for k, e in self._local_engines().items() if e.stats().running_requests == 0]
        if not idle:
            raise APIError(
                503,
                f"All {self.max_live_engines} engines are busy; retry shortly.",
                type="service_unavailable",
                code="engines_busy",
            )
        victim = min(idle, key=lambda k: self._last_used.get(k, 0.0))
        log.info("evicting idle engine %s (speculative: %s)", *victim)
        engine = self._engines.pop(victim)
        self._specs.pop(victim, None)
        await engine.shutdown()

    def _local_engines(self) -> dict[EngineKey, Engine]:
        """The engines that hold a model in this process (a remote engine holds a connection only)."""
        return {k: e for k, e in self._engines.items() if getattr(e, "in_process", True)}

    def engines(self) -> dict[EngineKey, Engine]:
        return dict(self._engines)

    def running_requests(self) -> int:
        return sum(e.stats().running_requests for e in self._engines.values())

    async def shutdown(self) -> None:
        self.ready = False
        await self.supervisor.shutdown()
        for engine in self._engines.values():
            await engine.shutdown()
        self._engines.clear()
        self._specs.clear()


def engine_label(key: EngineKey) -> str:
    """An engine's name in the log, `/ready` and the metrics: its checkpoint, `+method` when speculative."""
    model, method = key
    return model if method is None else f"{model}+{method}"


def _fits(spec: EngineSpec, adapters: list[AdapterRef]) -> bool:
    """Can an engine started with `spec` serve these adapters (the last LoRA slot stays empty)?

    The registry's `engine:` arguments win over the pool's choices (see `VllmEngine._build_args`)."""
    if not adapters:
        return True
    rank = spec.engine_args.get("max_lora_rank", spec.max_lora_rank)
    if rank is None or not (spec.max_lora_rank is not None or spec.engine_args.get("enable_lora")):
        return False
    slots = spec.engine_args.get("max_loras", spec.max_loras)
    return len(adapters) <= slots - 1 and max(lora_rank(a.path) for a in adapters) <= rank


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


def engine_factory(spec: EngineSpec) -> Engine:
    """The server's engines: a `RemoteEngine` for a remote stage's spec, else an in-process vLLM one."""
    if spec.remote is not None:
        from server.remote_engine import RemoteEngine

        return RemoteEngine(spec.remote, speculative_method=spec.speculative_method)
    return vllm_factory(spec)
