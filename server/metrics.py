"""Prometheus metrics of the serving layer, per stage. vLLM's engines register their own `vllm:*`
metrics in the same default registry, so `GET /metrics` shows both."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("stagechat_requests", "Generation requests by outcome", ["stage", "kind", "outcome"])
PROMPT_TOKENS = Counter("stagechat_prompt_tokens", "Prompt tokens", ["stage"])
COMPLETION_TOKENS = Counter("stagechat_completion_tokens", "Generated tokens", ["stage"])
RUNNING = Gauge("stagechat_running_requests", "Generations in progress", ["stage"])
# Set at scrape time from the engines themselves: proves an abort reached the engine.
ENGINE_REQUESTS = Gauge(
    "stagechat_engine_unfinished_requests", "Requests an engine has not finished", ["model", "speculative"]
)
TTFT = Histogram("stagechat_time_to_first_token_seconds", "Time to first token", ["stage"], buckets=_LATENCY_BUCKETS)
ITL = Histogram(
    "stagechat_inter_token_latency_seconds", "Time between streamed deltas", ["stage"], buckets=_LATENCY_BUCKETS
)
SPEC_DRAFT = Counter("stagechat_speculative_draft_tokens", "Draft tokens proposed", ["stage", "method"])
SPEC_ACCEPTED = Counter("stagechat_speculative_accepted_tokens", "Draft tokens accepted", ["stage", "method"])
# Admission limits (server/limits.py): what is configured (0 = off), what is admitted, what was refused.
LIMIT = Gauge("stagechat_limit", "Configured admission limits (0 = off)", ["limit"])
IN_FLIGHT = Gauge("stagechat_in_flight_requests", "Generations admitted and not yet finished")
RATE_LIMITED = Counter("stagechat_rate_limited", "Requests refused with 429, by limit", ["limit"])
TOO_LARGE = Counter("stagechat_too_large", "Requests or WebSocket frames refused as too large", ["door"])
# Faults (server/supervisor.py, server/serving.py): engines restarted after dying, and answers served
# whose generation-log row could not be written (the store was down).
ENGINE_RESTARTS = Counter("stagechat_engine_restarts", "Engines restarted after dying", ["engine"])
ENGINE_DEATHS = Counter("stagechat_engine_deaths", "Engines found dead", ["engine"])
GENERATION_LOG_FAILURES = Counter(
    "stagechat_generation_log_failures", "Served answers whose generation-log row could not be written"
)
