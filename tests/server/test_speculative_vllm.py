"""Per-request speculative decoding on real vLLM (`stagechat serve`, CPU build), driven by the openai
client: figures in the body and the final stream chunk, an adapter stage on a speculative engine,
the Prometheus counters, losslessness at temperature 0 for every method, and an unchanged output
distribution at temperature > 0 (a chi-square test that is also shown to detect a real shift).

The demo family the repository ships is checked lossless with its draft by its quick eval
(tests/models/test_manifest.py), which runs every stage with and without it.

One server serves a random tiny family (base, a LoRA adapter, a smaller draft with the same
tokenizer) with `--max-engines 1`, so each variant's engine starts lazily and evicts the previous
one. To pay each engine start once, every request a variant needs is made in one pass per variant
(`runs`, module-scoped) and the tests assert on what it collected.
"""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from server.launcher import stagechat_server

pytestmark = pytest.mark.integration

METHODS = ("ngram", "draft", "twin")
PROMPTS = ["The capital of Kenya is", "Hello there, how are you", "I am a small model and I know"]
GREEDY_TOKENS = 32
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
SEEDS = range(200)
SAMPLE_TOKENS = 3  # positions 2..3 are where speculation proposes and the sampler accepts or rejects


@pytest.fixture(scope="module")
def spec_family(tmp_path_factory):
    from models.tiny import make_tiny_adapter, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("spec-family")
    make_tiny_checkpoint(root / "base")
    make_tiny_adapter(root / "base", root / "lora")
    # Same tokenizer (trained deterministically on the same text), one layer, other weights.
    make_tiny_checkpoint(root / "draft", layers=1, seed=3)
    (root / "stages.yaml").write_text(
        "engine: {max_model_len: 512, dtype: float32}\n"
        "stages:\n"
        "  base:\n"
        "    model: ./base\n"
        "    speculative:\n"
        "      ngram: {method: ngram, num_speculative_tokens: 3, prompt_lookup_max: 3, prompt_lookup_min: 1}\n"
        "      draft: {method: draft_model, model: ./draft, num_speculative_tokens: 3}\n"
        # the target as its own draft: acceptance near 1 at temperature 0, so the greedy check has teeth
        "      twin: {method: draft_model, model: ./base, num_speculative_tokens: 3}\n"
        "  sft:\n"
        "    adapter: ./lora\n"
        "    base: base\n"
    )
    return root


@pytest.fixture(scope="module")
def server(spec_family, tmp_path_factory):
    # The server refuses draft_model at temperature > 0 on CPU (it is not lossless there); this one
    # serves it anyway, so the distribution test below keeps tracking vLLM.
    server = stagechat_server(
        spec_family / "stages.yaml",
        tmp_path_factory.mktemp("spec-data"),
        ("--no-ui", "--max-engines", "1"),
        env={"STAGECHAT_ALLOW_LOSSY_SPECULATION": "1"},
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)


def _sample_tokens(client, method: str, temperature: float) -> list[tuple[str, ...]]:
    def one(seed):
        r = client.completions.create(
            model="base",
            prompt="The capital of",
            max_tokens=SAMPLE_TOKENS,
            temperature=temperature,
            seed=seed,
            logprobs=0,
            extra_body={"speculative": method, "ignore_eos": True},
        )
        return tuple(r.choices[0].logprobs.tokens)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, SEEDS))


@pytest.fixture(scope="module")
def runs(client, server):
    """Everything each variant answers, collected variant by variant (one engine start each)."""
    out = {}
    for method in ("off", *METHODS):
        extra = {"speculative": method}
        greedy = [
            client.completions.create(
                model="base",
                prompt=p,
                max_tokens=GREEDY_TOKENS,
                temperature=0,
                extra_body={**extra, "ignore_eos": True},
            )
            for p in PROMPTS
        ]
        sft = client.chat.completions.create(
            model="sft", messages=MESSAGES, max_tokens=GREEDY_TOKENS, temperature=0, extra_body=extra
        )
        chunks = list(
            client.chat.completions.create(
                model="sft",
                messages=MESSAGES,
                max_tokens=GREEDY_TOKENS,
                temperature=0,
                extra_body=extra,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        out[method] = {
            "greedy": greedy,
            "sft": sft,
            "chunks": chunks,
            "samples": _sample_tokens(client, method, 1.0) if method != "twin" else None,
            "engines": httpx.get(f"{server.url}/ready").json()["engines"],
        }
        if method == "off":  # the power check: the same engine, a colder temperature
            out["off@0.7"] = {"samples": _sample_tokens(client, "off", 0.7)}
    out["metrics"] = httpx.get(f"{server.url}/metrics").text
    return out


# -- figures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_figures_in_the_body_come_from_vllm(runs, method):
    for reply in [*runs[method]["greedy"], runs[method]["sft"]]:
        spec = reply.model_extra["speculative"]
        assert spec["method"] == method
        assert 0 < spec["draft_tokens"] and 0 <= spec["accepted_tokens"] <= spec["draft_tokens"]
        assert spec["acceptance_rate"] == pytest.approx(spec["accepted_tokens"] / spec["draft_tokens"], abs=1e-4)
        assert 1.0 <= spec["mean_acceptance_length"] <= 4.0  # 1 + accepted per step, k = 3
    for reply in [*runs["off"]["greedy"], runs["off"]["sft"]]:
        assert "speculative" not in reply.model_extra


@pytest.mark.parametrize("method", ["ngram", "twin"])
def test_drafts_are_accepted_where_they_should_be(runs, method):
    # A random model at temperature 0 falls into loops that prompt lookup predicts; the target as
    # its own draft proposes exactly what the target picks.
    replies = runs[method]["greedy"]
    drafted = sum(r.model_extra["speculative"]["draft_tokens"] for r in replies)
    accepted = sum(r.model_extra["speculative"]["accepted_tokens"] for r in replies)
    assert accepted > 0.5 * drafted


@pytest.mark.parametrize("method", METHODS)
def test_figures_in_the_final_stream_chunk_of_an_adapter_stage(runs, method):
    chunks = runs[method]["chunks"]
    with_choices = [c for c in chunks if c.choices]
    assert all("speculative" not in (c.model_extra or {}) for c in with_choices[:-1])
    final = with_choices[-1]
    assert final.choices[0].finish_reason is not None
    assert final.model_extra["speculative"]["method"] == method
    assert final.model_extra["speculative"]["draft_tokens"] > 0
    assert chunks[-1].usage.completion_tokens == runs[method]["sft"].usage.completion_tokens
    assert all("speculative" not in (c.model_extra or {}) for c in runs["off"]["chunks"])


@pytest.mark.parametrize("method", METHODS)
def test_marks_add_up_to_the_figures(runs, method):
    # server.spec_marks: one mark per token, from vLLM's per-step figures and the streamed deltas
    final = [c for c in runs[method]["chunks"] if c.choices][-1]
    replies = [
        (r.choices[0], r.model_extra["speculative"], r.usage.completion_tokens)
        for r in [*runs[method]["greedy"], runs[method]["sft"]]
    ]
    replies.append((final.choices[0], final.model_extra["speculative"], runs[method]["sft"].usage.completion_tokens))
    for choice, spec, tokens in replies:
        marks = choice.model_extra["speculative_marks"]
        assert len(marks["tokens"]) == tokens and marks["tokens"][0] == "target"
        assert marks["tokens"].count("accepted") + marks["dropped"] == spec["accepted_tokens"]
        assert sum(d for d, _ in marks["steps"]) == spec["draft_tokens"]
        assert sum(p["accepted"] for p in marks["by_position"]) == spec["accepted_tokens"]
    assert all("speculative_marks" not in r.choices[0].model_extra for r in runs["off"]["greedy"])


@pytest.mark.parametrize("method", METHODS)
def test_each_variant_is_its_own_engine_and_evicts_the_idle_one(runs, method):
    assert runs[method]["engines"] == [{"model": runs[method]["engines"][0]["model"], "speculative": method}]
    assert runs["off"]["engines"][0]["speculative"] == "off"


def test_prometheus_counters_per_stage_and_method(runs):
    def value(name, stage, method):
        line = next(
            row
            for row in runs["metrics"].splitlines()
            if row.startswith(f'{name}_total{{method="{method}",stage="{stage}"}}')
        )
        return float(line.split()[-1])

    for method in METHODS:
        drafted = value("stagechat_speculative_draft_tokens", "sft", method)
        accepted = value("stagechat_speculative_accepted_tokens", "sft", method)
        # the sft stage's two requests (body + stream) per method
        expected = sum(r.model_extra["speculative"]["draft_tokens"] for r in [runs[method]["sft"]])
        assert drafted >= expected > 0 and 0 <= accepted <= drafted
        assert value("stagechat_speculative_draft_tokens", "base", method) > 0
    assert 'method="off"' not in runs["metrics"]


# -- lossless -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_temperature_zero_text_is_identical_with_and_without_speculation(runs, method):
    for off, spec in zip(runs["off"]["greedy"], runs[method]["greedy"]):
        assert spec.choices[0].text == off.choices[0].text
        assert spec.usage.completion_tokens == GREEDY_TOKENS
    # also for an adapter stage riding the speculative engine (the draft has no adapter)
    assert runs[method]["sft"].choices[0].message.content == runs["off"]["sft"].choices[0].message.content


def chi_square_p(a: list, b: list) -> float:
    """Two-sample chi-square test of homogeneity; categories with expected count < 5 pooled."""
    import torch

    ca, cb = Counter(a), Counter(b)
    na, nb = len(a), len(b)
    rows, other = [], [0, 0]
    for key in set(ca) | set(cb):
        pair = [ca[key], cb[key]]
        if sum(pair) * min(na, nb) / (na + nb) < 5:
            other = [other[0] + pair[0], other[1] + pair[1]]
        else:
            rows.append(pair)
    if sum(other):
        rows.append(other)
    if len(rows) < 2:
        return 1.0
    stat = 0.0
    for x, y in rows:
        total = x + y
        for observed, n in ((x, na), (y, nb)):
            expected = total * n / (na + nb)
            stat += (observed - expected) ** 2 / expected
    df = len(rows) - 1
    return float(
        torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64))
    )


def positional_p(a: list[tuple], b: list[tuple]) -> float:
    """The smallest p over token positions, Bonferroni-corrected."""
    return min(
        1.0, SAMPLE_TOKENS * min(chi_square_p([s[i] for s in a], [s[i] for s in b]) for i in range(SAMPLE_TOKENS))
    )


def test_the_distribution_test_detects_a_temperature_shift(runs):
    off, colder = runs["off"]["samples"], runs["off@0.7"]["samples"]
    assert all(len(s) == SAMPLE_TOKENS for s in off + colder)
    assert len(set(off)) > 10  # the samples do vary by seed
    assert positional_p(off, colder) < 0.001


# Not strict: the shift shows in most runs but not all (one full-suite run of several passed), so a
# strict mark made the suite flaky. An XPASS in the report is the sign to re-check vLLM.
VLLM_CPU_DRAFT_SAMPLING = pytest.mark.xfail(
    strict=False,
    reason=(
        "vLLM 0.32 CPU: with draft_model at temperature > 0 the tokens after the first usually come from "
        "a different distribution (chi-square p ~ 1e-23 at position 2 over 200 seeds, with and without "
        "seeds), and drafts are almost never accepted; temperature 0 is lossless"
    ),
)


@pytest.mark.parametrize(
    "method",
    [
        # ngram rarely finds a match in a short sampled continuation, so this check is weak for it
        "ngram",
        pytest.param("draft", marks=VLLM_CPU_DRAFT_SAMPLING),
    ],
)
def test_sampling_distribution_is_unchanged_by_speculation(runs, method):
    assert positional_p(runs["off"]["samples"], runs[method]["samples"]) > 0.001


def test_chi_square_p_values():
    assert chi_square_p(["a"] * 50 + ["b"] * 50, ["a"] * 50 + ["b"] * 50) == pytest.approx(1.0)
    # 2x2 table [[60, 40], [40, 60]]: chi2 = 8.0 on 1 df -> p = 0.004678
    assert chi_square_p(["a"] * 60 + ["b"] * 40, ["a"] * 40 + ["b"] * 60) == pytest.approx(0.004678, rel=1e-3)
    assert math.isclose(chi_square_p(["a"] * 100, ["b"] * 100), 0.0, abs_tol=1e-12)
