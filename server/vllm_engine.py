"""`VllmEngine`: the `Engine` protocol on a real vLLM `AsyncLLM` (CPU or GPU build alike).

One instance serves one checkpoint with one speculative configuration; LoRA adapters ride on it
per request. It turns `SamplingSettings` into vLLM's `SamplingParams`, streams output as deltas
(vLLM's DELTA output kind: no re-sending of text already sent) and aborts requests whose consumer
went away. When vLLM reports its engine core dead (`AsyncLLM.errored`: the core or its worker process
exited), streams raise `EngineDead` and `dead()` says so, for the pool to restart it. It knows nothing
about stages, chat templates or HTTP.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from server.engine import (
    AdapterRef,
    Delta,
    EngineDead,
    EngineRequestError,
    EngineStats,
    SamplingSettings,
    SpeculativeFigures,
    TokenLogprob,
)
from server.placement import SchedulerPlacement, confine_at, cpu_set

log = logging.getLogger(__name__)

DEFAULT_CPU_KVCACHE_GIB = "2"
# Which cores an engine's OpenMP threads run on. vLLM binds every engine to every core, and then its
# busy threads starve this process (HTTP, detokenisation, the UI) on a small machine: measured on
# 2 cores with a tiny model, 32 streams through the server went from 5,700 to 9,000 tok/s when the
# engine kept off core 0, and /health answered in 0.18 s instead of 1.1 s during a stream. So by
# default engines run on cores 1..N-1. `STAGECHAT_ENGINE_CPUS="0-3|4-7"` gives each engine the
# least-used of these lists instead; a VLLM_CPU_OMP_THREADS_BIND set by the user is left alone.
ENGINE_CPUS_ENV = "STAGECHAT_ENGINE_CPUS"
cpu_lists_in_use: Counter[str] = Counter()


def default_engine_cpus() -> str | None:
    cores = os.cpu_count() or 1
    if cores < 2 or "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return None
    return "1" if cores == 2 else f"1-{cores - 1}"


def default_dtype() -> str | None:
    """ "float32" on an x86 CPU without native bf16 (no AVX512-BF16, no AMX); None (vLLM's "auto")
    elsewhere. vLLM's CPU platform takes every x86 CPU to compute bf16 natively and runs float32
    checkpoints in bf16; on an AVX2-only CPU (measured on a 2-core AMD EPYC, the demo family, 32
    streams × 128 tokens) bf16 is emulated: base 1,828-1,918 tok/s in bf16 against 3,353 in float32,
    rlhf (LoRA) 919 against 2,700; at one stream rlhf 128 against 156."""
    import platform

    import torch
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return None if native_bf16 else "float32"


def with_default_dtype(args: dict[str, Any]) -> dict[str, Any]:
    """`args` with `dtype` set to `default_dtype()` where the stage's engine arguments set none."""
    dtype = default_dtype()
    return {**args, "dtype": dtype} if dtype is not None and "dtype" not in args else args


def prepare_engine_env() -> str | None:
    """Set what a vLLM engine's processes read from the environment when they are spawned (the pool
    starts one engine at a time); returns the cores it is bound to (None: the user's binding)."""
    # vLLM's CPU backend otherwise reserves 92% of the machine's memory per engine, so a
    # second engine (or anything else) cannot start. A few GiB of KV cache serve small models.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
    # vLLM leaves its ZeroMQ IPC sockets in the temp directory (about a dozen per engine start, even
    # after a clean shutdown): they go to a directory of this process's own, removed when it exits.
    if "VLLM_RPC_BASE_PATH" not in os.environ:
        os.environ["VLLM_RPC_BASE_PATH"] = ipc_dir = tempfile.mkdtemp(prefix=f"stagechat-vllm-{os.getpid()}-")
        atexit.register(shutil.rmtree, ipc_dir, ignore_errors=True)
    cpus = pick_cpu_list()
    if cpus is not None:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpus
        cpu_lists_in_use[cpus] += 1
    return cpus


def pick_cpu_list() -> str | None:
    lists = [s for s in os.environ.get(ENGINE_CPUS_ENV, "").split("|") if s]
    if not lists:
        return default_engine_cpus()
    return min(lists, key=lambda s: cpu_lists_in_use[s])


class VllmEngine:
    def __init__(
        self,
        model: str,
        *,
        engine_args: dict[str, Any] | None = None,
        speculative_method: str | None = None,
        speculative_config: dict[str, Any] | None = None,
        max_lora_rank: int | None = None,
    ):
        self.model = model
        self.speculative_method = speculative_method
        self.lossy_when_sampling = _draft_model_on_cpu(speculative_config)
        self._engine_args = dict(engine_args or {})
        self._speculative_config = speculative_config
        self._max_lora_rank = max_lora_rank  # None: this engine serves no adapter
        self._llm = None
        self._cpus: str | None = None
        self._placement: SchedulerPlacement | None = None
        self.tokenizer = None
        self.max_model_len = 0

    def _build_args(self):
        from vllm.engine.arg_utils import AsyncEngineArgs

        args: dict[str, Any] = {"model": self.model, "disable_log_stats": False}
        if self._max_lora_rank is not None:
            args.update(enable_lora=True, max_lora_rank=self._max_lora_rank)
        if self._speculative_config is not None:
            args["speculative_config"] = dict(self._speculative_config)
            # per-request acceptance figures (CompletionOutput.spec_decode_metrics), with the ordered
            # (drafted, accepted) pair of every verify step: the per-token marks (server.spec_marks)
            args["per_request_spec_decode_metrics"] = "detailed"
        args = with_default_dtype({**args, **self._engine_args})
        args["structured_outputs_config"] = _structured_outputs_config(args.get("structured_outputs_config"))
        return AsyncEngineArgs(**args)

    async def start(self) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        self._cpus = prepare_engine_env()
        if self._cpus is not None:
            log.info("engine %s bound to cpus %s", self.model, self._cpus)
        # Building the engine takes tens of seconds of blocking work: keep the event loop free
        # so /health answers meanwhile.
        args = self._build_args()
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        self.tokenizer = self._llm.get_tokenizer()
        self.max_model_len = self._llm.model_config.max_model_len
        # The cores vLLM bound this engine's worker to: ours (set above) or the user's.
        self._placement = _scheduler_placement(self._llm, os.environ.get("VLLM_CPU_OMP_THREADS_BIND"))

    async def warm_up(self, adapters: list[AdapterRef]) -> None:
        """One short generation per adapter (and without), so first requests pay no load cost."""
        settings = SamplingSettings(max_tokens=2, temperature=0.0, ignore_eos=True)
        prompt = self.tokenizer.encode("Hello", add_special_tokens=False) or [0]
        for i, adapter in enumerate([None, *adapters]):
            async for _ in self.generate(prompt, settings, f"warmup-{id(self)}-{i}", adapter):
                pass

    async def generate(
        self,
        prompt_token_ids: list[int],
        settings: SamplingSettings,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncIterator[list[Delta]]:
        from vllm.lora.request import LoRARequest

        params = _sampling_params(settings)
        lora = LoRARequest(adapter.name, adapter.int_id, adapter.path) if adapter else None
        if (reason := self.dead()) is not None:
            raise EngineDead(reason)
        stream = self._llm.generate(self._engine_input(prompt_token_ids), params, request_id, lora_request=lora)
        finished = False
        score_only = settings.max_tokens == 0  # vLLM generates at least one token: drop it
        sent_prompt = False
        placement = self._placement
        if placement is not None:
            placement.started()
        try:
            async for output in stream:
                batch = [self._delta(c, settings.logprobs or 0, score_only) for c in output.outputs]
                # vLLM sends the prompt's logprobs with the first output (later ones carry an empty rest)
                if output.prompt_logprobs and batch and not sent_prompt:
                    sent_prompt = True
                    batch[0].prompt_logprobs = _prompt_logprobs(
                        prompt_token_ids, output.prompt_logprobs, settings.prompt_logprobs or 0
                    )
                yield batch
                finished = output.finished
        except Exception as exc:
            if (reason := self.dead()) is not None:  # vLLM's EngineDeadError, or whatever the death broke
                finished = True  # nothing left to abort
                raise EngineDead(reason) from exc
            raise
        finally:
            if placement is not None:
                placement.finished()
            if not finished:  # the consumer went away (or failed): free the engine's slot now
                await stream.aclose()
                await self._llm.abort(request_id)

    def _engine_input(self, prompt_token_ids: list[int]):
        """The prompt as vLLM's renderer makes it (the same steps and checks `AsyncLLM` runs on a raw
        prompt), done here on the event loop. Given a raw `TokensPrompt`, vLLM 0.32 renders it in its
        renderer's one worker thread instead: a burst's requests then queue there, each comes back
        through the loop, and the thread's 41 µs per request compete with the loop for the GIL. In
        bursts of 128 (fake engine core) the first request reached the engine core after 45-90 ms
        that way, 37-44 ms rendered here. For token ids it is 3 µs of CPU, no tokenising."""
        from vllm.inputs import TokensPrompt
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        renderer = self._llm.renderer
        parsed = parse_model_prompt(self._llm.model_config, TokensPrompt(prompt_token_ids=prompt_token_ids))
        (engine_input,) = renderer.render_cmpl([parsed], renderer.default_cmpl_tok_params)
        return engine_input

    def check(self, settings: SamplingSettings) -> None:
        """vLLM's own request validation (logprob limits, logit-bias ids, structured-output schemas
        compiled by its backend), run before the request so a bad one is a 400, not a broken stream."""
        from vllm.exceptions import VLLMClientError

        config = self._llm.vllm_config
        try:
            _sampling_params(settings).verify(
                self._llm.model_config, config.speculative_config, config.structured_outputs_config, self.tokenizer
            )
        except (VLLMClientError, ValueError, TypeError, RuntimeError) as exc:
            raise EngineRequestError(str(exc), getattr(exc, "parameter", None)) from None

    def _delta(self, c, logprobs_k: int, score_only: bool = False) -> Delta:
        if score_only:
            return Delta(
                index=c.index,
                text="",
                token_ids=[],
                logprobs=None,
                finish_reason="length" if c.finish_reason is not None else None,
            )
        figures = None
        if c.finish_reason is not None and c.spec_decode_metrics is not None:
            m = c.spec_decode_metrics.to_dict()
            figures = SpeculativeFigures(
                method=self.speculative_method or "unknown",
                draft_tokens=m["num_draft_tokens"],
                accepted_tokens=m["num_accepted_draft_tokens"],
                acceptance_rate=m["draft_acceptance_rate"],
                mean_acceptance_length=m["mean_acceptance_length"],
                steps=tuple(zip(m.get("per_step_drafted", ()), m.get("per_step_accepted", ()))),
            )
        return Delta(
            index=c.index,
            text=c.text,
            token_ids=list(c.token_ids),
            logprobs=_logprobs(c.token_ids, c.logprobs, logprobs_k) if c.logprobs is not None else None,
            finish_reason=c.finish_reason,
            speculative=figures,
        )

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    def dead(self) -> str | None:
        return death_of(self._llm)

    def stats(self) -> EngineStats:
        if self._llm is None:
            return EngineStats()
        return EngineStats(running_requests=self._llm.output_processor.get_num_unfinished_requests())

    async def shutdown(self) -> None:
        self._placement = None
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        if self._cpus is not None:
            cpu_lists_in_use[self._cpus] -= 1
            self._cpus = None


def death_of(llm) -> str | None:
    """Why a started `AsyncLLM` can serve no more (None while it can): its engine core died (vLLM's
    `errored`: the core process exited or reported its worker's death) or its output loop ended."""
    if llm is None or not llm.errored:
        return None
    return f"{type(llm.dead_error).__name__}: {llm.dead_error}"


def _scheduler_placement(llm, bind: str | None) -> SchedulerPlacement | None:
    """On the CPU backend, with the engine's model bound to cores of its own (`bind`, one engine's
    `VLLM_CPU_OMP_THREADS_BIND` list): its scheduler follows the load (`server.placement`)."""
    from vllm.platforms import current_platform

    at = confine_at()
    if not bind or bind in ("auto", "nobind") or "|" in bind or at <= 0 or not current_platform.is_cpu():
        return None
    try:
        pid = llm.engine_core.resources.engine_manager.processes[0].pid
    except (AttributeError, IndexError):  # an engine core in this process, or another layout
        return None
    placement = SchedulerPlacement(pid, cpu_set(bind), at)
    return placement if placement.engine_cpus < placement.anywhere else None


def _structured_outputs_config(given):
    """Compact JSON by default: vLLM 0.32 sets whitespace per engine, not per request, and free
    whitespace let small models wander in newlines until max_tokens, truncating the JSON. It needs
    the xgrammar backend (which compiles JSON schemas, regexes, choices and EBNF grammars). The
    registry's `engine: {structured_outputs_config: {...}}` overrides either."""
    from vllm.config import StructuredOutputsConfig

    if isinstance(given, StructuredOutputsConfig):
        return given
    return StructuredOutputsConfig(**{"backend": "xgrammar", "disable_any_whitespace": True, **(given or {})})


def _draft_model_on_cpu(config: dict[str, Any] | None) -> bool:
    """vLLM 0.32's CPU build samples wrongly with a draft model at temperature > 0: the tokens after
    the first come from another distribution (chi-square p ~ 1e-23 over 200 seeds; the target as its
    own draft is accepted 4% of the time). Greedy decoding is unaffected. Tracked by a strict xfail
    test in tests/server/test_speculative_vllm.py."""
    if not config or config.get("method") != "draft_model":
        return False
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _sampling_params(s: SamplingSettings):
    # From the defining module: `from vllm import SamplingParams` goes through vLLM's lazy
    # module `__getattr__` (an import_module call) on every request.
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    return SamplingParams(
        n=s.n,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        min_p=s.min_p,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        repetition_penalty=s.repetition_penalty,
        stop=list(s.stop) or None,
        seed=s.seed,
        max_tokens=max(s.max_tokens, 1),
        logprobs=s.logprobs,
        prompt_logprobs=s.prompt_logprobs,
        logit_bias=dict(s.logit_bias) or None,
        structured_outputs=_structured(s),
        ignore_eos=s.ignore_eos,
        output_kind=RequestOutputKind.DELTA,
        # Built fresh for each request and not touched again, so `AsyncLLM` need not deep-copy it
        # (16 µs per request); vLLM's own server sets the same for its per-request params.
        skip_clone=True,
    )


def _structured(s: SamplingSettings):
    if s.structured is None:
        return None
    import json

    from vllm.sampling_params import StructuredOutputsParams

    kind, value = s.structured.kind, s.structured.value
    if kind == "json":
        return StructuredOutputsParams(json=value)
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "choice":
        return StructuredOutputsParams(choice=json.loads(value))
    return StructuredOutputsParams(**{kind: value})  # regex, grammar


def _prompt_logprobs(token_ids, positions, k: int) -> list[TokenLogprob | None]:
    """Prompt logprobs as vLLM gives them (the first position None) in the shape of `_logprobs`."""
    result: list[TokenLogprob | None] = [None]
    result.extend(_logprobs(token_ids[1:], positions[1:], k))
    return result


def _logprobs(token_ids, positions, k: int) -> list[TokenLogprob]:
    """vLLM gives, per position, {token_id: Logprob(logprob, rank, decoded_token)}: the top k plus
    the sampled token. OpenAI wants the sampled token and the top k alternatives by rank."""
    result = []
    for token_id, candidates in zip(token_ids, positions):
        chosen = candidates[token_id]
        top = [(i, lp) for i, lp in sorted(candidates.items(), key=lambda item: item[1].rank) if lp.rank <= k]
        result.append(
            TokenLogprob(
                token=chosen.decoded_token or "",
                logprob=max(chosen.logprob, -9999.0),  # -inf is not JSON
                top=tuple((lp.decoded_token or "", max(lp.logprob, -9999.0)) for _, lp in top),
                token_id=token_id,
                rank=chosen.rank,
                top_ids=tuple(i for i, _ in top),
            )
        )
    return result
