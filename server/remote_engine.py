"""`RemoteEngine`: the `Engine` protocol on an OpenAI-compatible vLLM server reached over HTTP.

A remote stage (`remote: {url, model, api_key_env}` in the registry) is served by a vLLM server
somewhere else: a GPU node, a Ray cluster running tensor/pipeline parallelism. This engine sends the
prompt's token ids to the server's `/completions` endpoint (streamed, SSE), turns its chunks into
deltas, and closes the HTTP stream when the consumer goes away, which makes vLLM abort the request.
Speculation is per server (a speculative method of a remote stage names its own endpoint); the
acceptance figures come from the final usage chunk of a server started with
`--per-request-spec-decode-metrics summary` (vLLM gives them for n = 1 only), else they are absent.

Adapter stages whose root is a remote stage (say, the next RLHF round) are loaded onto the server
with `/v1/load_lora_adapter`, which vLLM offers only with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`;
the adapter's path must be readable by the server. Failures become OpenAI errors: unreachable → 503,
too slow → 504, a broken or refusing server → 502. `problem()` says what is wrong, for `/ready`.

It knows HTTP, SSE and vLLM's OpenAI dialect; it knows nothing about stages, chat templates or the
pool (the chat template is applied here, by the serving layer, with the tokenizer this engine loads).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx

from server.engine import (
    AdapterRef,
    Delta,
    EngineRequestError,
    EngineStats,
    SamplingSettings,
    SpeculativeFigures,
    TokenLogprob,
)
from server.errors import APIError
from server.registry import RemoteSpec

log = logging.getLogger(__name__)

PROBE_SECONDS = 5.0  # how often the server's /models is polled (finds a server that came back)
CONNECT_SECONDS = 5.0


def _unavailable(message: str) -> APIError:
    return APIError(503, message, type="service_unavailable", code="remote_unavailable")


def _bad_gateway(message: str) -> APIError:
    return APIError(502, message, type="bad_gateway", code="remote_error")


def _timeout(message: str) -> APIError:
    return APIError(504, message, type="gateway_timeout", code="remote_timeout")


class RemoteEngine:
    lossy_when_sampling = False  # the server's business; vLLM's GPU speculation is lossless
    in_process = False  # holds no model here: does not count against the pool's live-engine limit

    def __init__(self, remote: RemoteSpec, *, speculative_method: str | None = None):
        self.remote = remote
        self.speculative_method = speculative_method
        self.url = remote.url.rstrip("/")
        self.name = f"{self.url} ({remote.model})"
        self.tokenizer = None
        self._max_model_len: int | None = None
        self._problem: str | None = "not started"
        self._adapter_problems: dict[str, str] = {}
        self._adapters: list[AdapterRef] = []
        self._running: dict[str, httpx.Response | None] = {}
        self._client: httpx.AsyncClient | None = None
        self._probe: asyncio.Task | None = None

    # -- life cycle ------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        env = self.remote.api_key_env
        if env is None:
            return {}
        key = os.environ.get(env)
        if not key:
            raise _bad_gateway(f"Remote {self.name}: the API key variable {env} is not set on this server.")
        return {"Authorization": f"Bearer {key}"}

    async def start(self) -> None:
        """Load the tokenizer and look for the server. A server that is down does not stop the start:
        this stage answers 503 and `/ready` names it until a probe finds the server."""
        from transformers import AutoTokenizer

        self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.remote.tokenizer)
        timeout = httpx.Timeout(self.remote.timeout, connect=CONNECT_SECONDS)
        self._client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None))
        await self._check_server()
        self._probe = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _check_server(self) -> bool:
        """Ask the server what it serves; learn the context length; load pending adapters."""
        try:
            r = await self._client.get(f"{self.url}/models", headers=self._headers(), timeout=CONNECT_SECONDS)
        except APIError as exc:
            self._problem = exc.message
            return False
        except httpx.HTTPError as exc:
            self._set_problem(f"unreachable ({type(exc).__name__}: {exc})")
            return False
        if r.status_code != 200:
            self._set_problem(f"GET /models answered {r.status_code}: {r.text[:200]}")
            return False
        models = {m.get("id"): m for m in r.json().get("data", [])}
        if self.remote.model not in models:
            self._set_problem(f"the server does not serve '{self.remote.model}' (it serves {', '.join(models)})")
            return False
        length = models[self.remote.model].get("max_model_len")
        if length is None:  # a LoRA module: the context is its parent's
            parent = models.get(models[self.remote.model].get("parent"), {})
            length = parent.get("max_model_len")
        self._max_model_len = int(length) if length else self._max_model_len or 0
        if self._problem is not None:
            log.info("remote %s is up (max_model_len %s)", self.name, self._max_model_len)
        self._problem = None
        await self._load_adapters(set(models))
        return True

    def _set_problem(self, why: str) -> None:
        if self._problem != why:
            log.warning("remote %s: %s", self.name, why)
        self._problem = why

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                await self._check_server()
            except Exception:  # never let the probe die: it is how a returning server is found
                log.exception("remote %s: probe failed", self.name)

    def problem(self) -> str | None:
        """What keeps this engine from serving (None when it serves), for `/ready`."""
        if self._problem is not None:
            return f"remote {self.name}: {self._problem}"
        if self._adapter_problems:
            return "; ".join(self._adapter_problems.values())
        return None

    @property
    def max_model_len(self) -> int:
        # Read by the serving layer before anything is sent: a down server is a 503 here, up front.
        if self._problem is not None or self._max_model_len is None:
            raise _unavailable(
                f"The remote server of this stage, {self.name}, is unavailable: {self._problem or 'not reached yet'}."
            )
        return self._max_model_len

    async def warm_up(self, adapters: list[AdapterRef]) -> None:
        """Make the adapters servable: load those the server does not list yet."""
        self._adapters = [*self._adapters, *(a for a in adapters if a not in self._adapters)]
        if self._problem is None and await self._check_server():
            # One short generation per model, as in-process engines do: vLLM's first request on a
            # fresh server pays seconds of one-off work, which should not land on a user.
            settings = SamplingSettings(max_tokens=2, temperature=0.0, ignore_eos=True)
            prompt = self.tokenizer.encode("Hello", add_special_tokens=False) or [0]
            try:
                for i, adapter in enumerate([None, *(a for a in adapters if a.name not in self._adapter_problems)]):
                    async for _ in self.generate(prompt, settings, f"warmup-{id(self)}-{i}", adapter):
                        pass
            except APIError as exc:  # the server went away meanwhile: the probe will find it again
                self._set_problem(exc.message)

    async def _load_adapters(self, served: set[str]) -> None:
        for adapter in self._adapters:
            if adapter.name in served:
                self._adapter_problems.pop(adapter.name, None)
                continue
            try:
                r = await self._client.post(
                    f"{self.url}/load_lora_adapter",
                    headers=self._headers(),
                    json={"lora_name": adapter.name, "lora_path": adapter.path},
                )
            except httpx.HTTPError as exc:
                self._adapter_problems[adapter.name] = f"adapter '{adapter.name}' not loaded on {self.name}: {exc}"
                continue
            if r.status_code == 200:
                log.info("remote %s: loaded adapter %s from %s", self.name, adapter.name, adapter.path)
                self._adapter_problems.pop(adapter.name, None)
            elif r.status_code in (404, 405):
                self._adapter_problems[adapter.name] = (
                    f"adapter stage '{adapter.name}' cannot be loaded onto {self.name}: the server does not allow "
                    "loading LoRA adapters at runtime. Start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
                    f"(and --enable-lora), or list the adapter in its --lora-modules as {adapter.name}={adapter.path}."
                )
            else:
                self._adapter_problems[adapter.name] = (
                    f"adapter stage '{adapter.name}': {self.name} refused to load {adapter.path} "
                    f"({r.status_code}: {_error_message(r.text)})"
                )
            if adapter.name in self._adapter_problems:
                log.warning("%s", self._adapter_problems[adapter.name])

    async def shutdown(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def stats(self) -> EngineStats:
        return EngineStats(running_requests=len(self._running))

    # -- requests --------------------------------------------------------------------------------

    def check(self, settings: SamplingSettings) -> None:
        if getattr(settings, "prompt_logprobs", None) is not None or settings.max_tokens == 0:
            raise EngineRequestError(
                "Prompt logprobs (echo, max_tokens 0) are not offered by remote stages.",
                "prompt_logprobs" if settings.max_tokens else "max_tokens",
            )

    def _body(self, prompt_token_ids: list[int], s: SamplingSettings, adapter: AdapterRef | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": adapter.name if adapter else self.remote.model,
            "prompt": prompt_token_ids,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k,
            "min_p": s.min_p,
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "repetition_penalty": s.repetition_penalty,
            "stop": list(s.stop),
            "seed": s.seed,
            "n": s.n,
            "ignore_eos": s.ignore_eos,
            "logprobs": s.logprobs,
            "stream": True,
            "stream_options": {"include_usage": True},
            "return_token_ids": True,
            # "token_id:N" instead of text: distinct tokens that decode alike ("" for a partial
            # UTF-8 byte) would otherwise collapse into one key of `top_logprobs`.
            "return_tokens_as_token_ids": s.logprobs is not None,
        }
        bias = getattr(s, "logit_bias", ())
        if bias:
            body["logit_bias"] = {str(token): value for token, value in bias}
        structured = getattr(s, "structured", None)
        if structured is not None:
            value: Any = True if structured.kind == "json_object" else structured.value
            if structured.kind == "choice":
                value = json.loads(structured.value)
            body["structured_outputs"] = {structured.kind: value}
        return body

    async def generate(
        self,
        prompt_token_ids: list[int],
        settings: SamplingSettings,
        request_id: str,
        adapter: AdapterRef | None = None,
    ) -> AsyncIterator[list[Delta]]:
        if adapter is not None and adapter.name in self._adapter_problems:
            raise _bad_gateway(self._adapter_problems[adapter.name])
        if self._client is None:
            raise _unavailable(f"The remote engine {self.name} is shut down.")
        body = self._body(prompt_token_ids, settings, adapter)
        headers = {**self._headers(), "X-Request-Id": request_id}
        # The finishing delta of a single sequence waits for the usage chunk, which carries the
        # speculation figures; with n > 1 vLLM gives none (stated as absent: no figures).
        hold = settings.n == 1 and self.speculative_method is not None
        held: Delta | None = None
        self._running[request_id] = None
        try:
            async with self._client.stream("POST", f"{self.url}/completions", json=body, headers=headers) as r:
                self._running[request_id] = r
                if r.status_code != 200:
                    raise _upstream_error(r.status_code, (await r.aread()).decode(errors="replace"), self.name)
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise _upstream_error(chunk["error"].get("code") or 500, data, self.name)
                    if not chunk.get("choices"):  # the usage chunk
                        if held is not None:
                            held.speculative = self._figures(chunk)
                        continue
                    batch = [self._delta(c, settings.logprobs or 0) for c in chunk["choices"]]
                    if hold and batch[-1].finish_reason is not None:
                        held = batch.pop()
                    if batch:
                        yield batch
                        # Bytes the server already sent are read without suspending, so a stream
                        # with a backlog would keep the loop to itself (8 bursting streams of 16
                        # sequences got their first tokens after up to 10 s). Let the others in.
                        await asyncio.sleep(0)
            if held is not None:
                yield [held]
        except httpx.TimeoutException as exc:
            raise _timeout(f"The remote server {self.name} did not answer in time ({type(exc).__name__}).") from None
        except httpx.TransportError as exc:
            self._set_problem(f"unreachable ({type(exc).__name__}: {exc})")
            raise _unavailable(f"The remote server {self.name} is unreachable ({type(exc).__name__}).") from None
        finally:
            # Leaving the `async with` early closed the HTTP stream: vLLM aborts the request.
            self._running.pop(request_id, None)

    def _figures(self, chunk: dict[str, Any]) -> SpeculativeFigures | None:
        m = ((chunk.get("metrics") or {}).get("speculative_decoding")) or None
        if not m:
            return None
        return SpeculativeFigures(
            method=self.speculative_method or "unknown",
            draft_tokens=m["num_draft_tokens"],
            accepted_tokens=m["num_accepted_draft_tokens"],
            acceptance_rate=m["draft_acceptance_rate"],
            mean_acceptance_length=m["mean_acceptance_length"],
        )

    async def abort(self, request_id: str) -> None:
        response = self._running.get(request_id)
        if response is not None:
            await response.aclose()

    def _delta(self, choice: dict[str, Any], k: int) -> Delta:
        lp = choice.get("logprobs")
        return Delta(
            index=choice.get("index", 0),
            text=choice.get("text") or "",
            token_ids=list(choice.get("token_ids") or []),
            logprobs=self._logprobs(lp, k) if lp else None,
            finish_reason=choice.get("finish_reason"),
        )

    def _logprobs(self, lp: dict[str, Any], k: int) -> list[TokenLogprob]:
        """OpenAI completions logprobs (`tokens`, `token_logprobs`, `top_logprobs` as {token: logprob},
        the sampled token plus the top k; tokens as "token_id:N") as the sampled token and its top k
        alternatives, each token's text decoded here as vLLM decodes it for in-process engines."""
        result = []
        tops = lp.get("top_logprobs") or [None] * len(lp.get("tokens", []))
        for token, logprob, top in zip(lp.get("tokens", []), lp.get("token_logprobs", []), tops):
            alternatives = sorted((top or {}).items(), key=lambda item: -item[1])[:k]
            ids = [_token_id(token), *(_token_id(t) for t, _ in alternatives)]
            texts = self._decode_each(ids)
            result.append(
                TokenLogprob(
                    token=texts[0],
                    logprob=max(logprob if logprob is not None else -9999.0, -9999.0),
                    top=tuple((text, max(v, -9999.0)) for text, (_, v) in zip(texts[1:], alternatives)),
                    token_id=ids[0],
                    top_ids=tuple(ids[1:]),
                )
            )
        return result

    def _decode_each(self, ids: list[int]) -> list[str]:
        try:
            from vllm.tokenizers.detokenizer_utils import convert_ids_list_to_tokens
        except ImportError:  # a front end without vLLM installed
            return [self.tokenizer.decode([i]) or "" for i in ids]
        return convert_ids_list_to_tokens(self.tokenizer, ids)


def _token_id(token: str) -> int:
    return int(token.removeprefix("token_id:"))


def _error_message(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300]
    error = body.get("error", body) if isinstance(body, dict) else body
    return str(error.get("message", error) if isinstance(error, dict) else error)[:300]


def _upstream_error(status: int, text: str, name: str) -> APIError:
    """The remote's refusal as our error: its 400s are the client's, the rest are the gateway's."""
    message = _error_message(text)
    if status in (400, 422):
        return APIError(400, f"The remote server {name} refused the request: {message}", code="remote_bad_request")
    if status == 429:
        return APIError(
            429,
            f"The remote server {name} is over a limit: {message}",
            type="rate_limit_error",
            code="remote_rate_limited",
        )
    if status == 503:
        return _unavailable(f"The remote server {name} is unavailable: {message}")
    if status == 504:
        return _timeout(f"The remote server {name} timed out: {message}")
    return _bad_gateway(f"The remote server {name} answered {status}: {message}")
