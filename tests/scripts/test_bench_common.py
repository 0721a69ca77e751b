"""The bench harness (`scripts/bench_common.py`) and the scripts' shape, without running a benchmark.

The streaming client is driven against a small inline SSE app and against the real app on scripted
engines, each under uvicorn on loopback (httpx's ASGI transport buffers a whole response, so it could
not show chunk times). Every script is run with `--help` only: it must parse, offer `--json`, and load
nothing heavy before its arguments are parsed.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (REPO / "scripts").glob("*.py") if p.name != "bench_common.py")


def _load_harness():
    # The scripts import it as a sibling module (`python scripts/x.py`); here it is loaded from its
    # file under the same name, so no path is added for the whole test session.
    spec = importlib.util.spec_from_file_location("bench_common", REPO / "scripts" / "bench_common.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_common", module)
    spec.loader.exec_module(module)
    return module


bc = _load_harness()

TOKEN_DELAY = 0.02


def _sse_app() -> Starlette:
    """A chat completions endpoint in the shape stagechat and vLLM stream (compact JSON): a role chunk
    with empty content, three token chunks TOKEN_DELAY apart, a usage chunk with speculative figures,
    [DONE]. `Authorization: Bearer refuse` gets a 429; `"stream_options"` absent, no usage chunk."""
    seen: list[dict] = []

    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        if request.headers.get("authorization") == "Bearer refuse":
            return JSONResponse({"error": {"message": "tokens per minute exhausted"}}, status_code=429)

        async def events():
            head = '{"id":"c1","object":"chat.completion.chunk","choices":['
            yield "data: " + head + '{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
            for word in ("Nairobi", " is", " it"):
                await asyncio.sleep(TOKEN_DELAY)
                delta = json.dumps({"content": word}, separators=(",", ":"))
                yield "data: " + head + '{"index":0,"delta":' + delta + ',"finish_reason":null}]}\n\n'
            yield ": a comment line, ignored\n\n"
            if body.get("stream_options", {}).get("include_usage"):
                yield (
                    'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7},'
                    '"speculative":{"draft_tokens":8,"accepted_tokens":6}}\n\n'
                )
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/ready", lambda request: JSONResponse({}), methods=["GET"]),
        ]
    )
    app.state.seen = seen
    return app


@pytest.fixture(scope="module")
def sse_server():
    app = _sse_app()
    with bc.serving_in_thread(app) as url:
        yield url, app.state.seen


def _run(coro):
    return asyncio.run(coro)


async def _stream_once(url: str, body: dict, **kwargs):
    async with bc.http_client(url) as client:
        return await bc.stream(client, "/v1/chat/completions", body, **kwargs)


def test_stream_times_every_chunk_and_reads_usage_and_speculative(sse_server):
    url, seen = sse_server
    began = time.perf_counter()
    r = _run(_stream_once(url, {"model": "m", "messages": [], "stream_options": {"include_usage": True}}))
    wall = time.perf_counter() - began

    assert seen[-1]["stream"] is True  # the client asks for a stream whatever the body says
    assert r.ok and r.status == 200 and r.error is None
    assert len(r.chunk_times) == 4  # the role chunk and three tokens; the usage chunk has no choice
    assert r.first_chunk == r.chunk_times[0]
    assert r.first_text == r.chunk_times[1]  # the role chunk's content is empty
    assert r.chunk_times == sorted(r.chunk_times) and len(r.gaps) == 3 and min(r.gaps) >= 0
    # Lower bounds only (a busy client may read two chunks at once): the server slept before each token.
    assert r.first_text >= TOKEN_DELAY and r.chunk_times[-1] >= 3 * TOKEN_DELAY
    assert r.chunk_times[-1] <= r.seconds <= wall
    assert r.usage == {"prompt_tokens": 5, "completion_tokens": 7}
    assert r.tokens == 7  # usage wins over the chunk count
    assert r.speculative == {"draft_tokens": 8, "accepted_tokens": 6}


def test_stream_without_usage_counts_chunks(sse_server):
    url, _ = sse_server
    r = _run(_stream_once(url, {"model": "m", "messages": []}))
    assert r.usage is None and r.speculative is None
    assert r.tokens == 4


def test_a_refused_stream_is_returned_not_raised(sse_server):
    url, _ = sse_server
    r = _run(_stream_once(url, {"model": "m", "messages": []}, headers={"Authorization": "Bearer refuse"}))
    assert not r.ok and r.status == 429
    assert "tokens per minute" in r.error
    assert r.chunk_times == [] and r.first_chunk is None and r.tokens == 0
    with pytest.raises(RuntimeError, match="429"):
        r.raise_for_status()


def test_timed_post_and_concurrently(sse_server):
    url, _ = sse_server

    async def go():
        async with bc.http_client(url) as client:
            (r, seconds) = await bc.timed_post(client, "/v1/chat/completions", {"model": "m", "messages": []})
            results, wall = await bc.concurrently(
                bc.stream(client, "/v1/chat/completions", {"model": "m"}) for _ in range(3)
            )
        return r, seconds, results, wall

    r, seconds, results, wall = _run(go())
    assert r.status_code == 200 and "data: " in r.text and seconds >= 3 * TOKEN_DELAY * 0.8
    assert len(results) == 3 and all(s.ok for s in results)
    assert wall < sum(s.seconds for s in results)  # at once, not one after another


def test_the_client_reads_stagechats_own_stream(fake_app):
    """The real app on scripted engines: chat (with usage and speculative figures) and the
    fixed-prompt completions load the serving benchmarks drive."""
    app, _ = fake_app()
    with bc.serving_in_thread(app) as url:
        body = {
            "model": "base",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 4,
            "stream_options": {"include_usage": True},
            "speculative": "ngram",
        }
        r = _run(_stream_once(url, body)).raise_for_status()
        assert r.tokens == r.usage["completion_tokens"] == 4 == len(r.chunk_times)
        assert 0 < r.first_chunk <= r.first_text <= r.seconds
        assert r.speculative["draft_tokens"] == 8

        async def completions():
            async with bc.http_client() as client:
                return await bc.completion_stream(client, url, "base", 3)

        ttft, tokens = _run(completions())
        assert ttft > 0 and tokens == 3
        figures = _run(bc.bench_http(url, "base", 3, [1, 2], repeats=2))
    assert set(figures) == {1, 2}
    for f in figures.values():
        assert set(f) == {"tok_s", "ttft_p50", "ttft_p99"} and f["tok_s"] > 0 and f["ttft_p99"] >= f["ttft_p50"] > 0


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_scripts_requests_against_the_real_app(fake_app):
    """What each script sends, read back through the harness, on scripted engines (6 tokens of script)."""
    app, _ = fake_app()
    health, rewards, speculative, structured = (
        _script(n) for n in ("bench_health", "bench_rewards", "bench_speculative", "bench_structured")
    )
    with bc.serving_in_thread(app) as url:

        async def reward_chat():
            async with bc.http_client(url) as client:
                return await rewards.chat(client, "base", 4)

        ttft, tokens = _run(reward_chat())
        assert ttft > 0 and tokens == 4

        spec = _run(speculative.load(url, "base", "ngram", 4, 2, 3))
        assert spec["tok_s"] > 0 and spec["ttft_ms"] > 0
        assert spec["acceptance"] == 0.75 and spec["mean_len"] == 2.5  # the scripted engine's figures

        free = _run(structured._load(url, "base", 4, 2, schema=False, rounds=1))
        assert free["tokens"] == 8 and free["tok_s"] > 0

    app, _ = fake_app({"stages": {"bench": {"model": "fake/bench"}}}, max_model_len=4096)  # bench_health's stage
    with bc.serving_in_thread(app) as url:

        async def health_requests():
            async with bc.http_client() as client:
                return await health.streams(client, url, 3, 4), await health.big_request(client, url, 0.001)

        failed, (status, seconds, answer) = _run(health_requests())
        assert failed == 0 and status == 200 and seconds > 0 and "chat.completion" in answer


def test_bench_limits_burst_is_refused_by_the_right_limit():
    limits = _script("bench_limits")
    app, engines = limits.app_on_scripted_engines(limits.LIMITS)
    with bc.serving_in_thread(app) as url:
        results = _run(limits.burst(url, ["key0"] * 10))
    codes = sorted(code for code, _, _ in results)
    assert codes == [200] * 8 + [429] * 2
    assert {why for code, _, why in results if code == 429} == {"concurrent per key"}
    assert len(engines[0].requests) == 8


def _old_percentile(values, q):  # what bench_health and bench_overhead each wrote by hand
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_percentile_is_the_nearest_observation_as_before():
    rng = random.Random(0)
    for n in [1, 2, 3, 4, 5, 10, 11, 51, 100, 101, 257]:
        values = [rng.random() * 100 for _ in range(n)]
        for q in (0.0, 0.25, 0.5, 0.9, 0.99, 1.0):
            assert bc.percentile(values, q) == _old_percentile(values, q), (n, q)
    assert bc.percentile(iter([3.0, 1.0, 2.0]), 0.5) == 2.0  # any iterable


def test_load_figures_median_of_runs_and_ratio():
    f = bc.load_figures([0.010, 0.020, 0.030, 0.200], tokens=400, seconds=2.0)
    assert f["tok_s"] == 200
    assert f["ttft_p50"] == pytest.approx(25.0)
    assert f["ttft_p99"] == pytest.approx(200.0)
    runs = [{"tok_s": 1.0, "ttft_p50": 9.0}, {"tok_s": 3.0, "ttft_p50": 1.0}, {"tok_s": 2.0, "ttft_p50": 5.0}]
    assert bc.median_of_runs(runs) == {"tok_s": 2.0, "ttft_p50": 5.0}
    assert bc.ratio(3.0, 2.0) == 1.5
    assert bc.ratio(1.0, 0.0) == pytest.approx(1e9)
    assert bc.nan_if_empty(max, [1.0, 2.0]) == 2.0 and bc.nan_if_empty(max, []) != bc.nan_if_empty(max, [])


def _args(json_value):
    parser = argparse.ArgumentParser()
    bc.add_json_argument(parser)
    return parser.parse_args([] if json_value is None else ["--json", *([] if json_value == "-" else [json_value])])


def test_json_argument_forms(tmp_path):
    assert _args(None).json is None
    assert _args("-").json == "-"
    assert _args(str(tmp_path / "x.json")).json == str(tmp_path / "x.json")


def test_output_json_on_stdout_text_on_stderr(capfd):
    with bc.output(_args("-")) as figures:
        print("a progress line")
        os.write(1, b"a child process writing to fd 1\n")
        figures.update({1: {"tok_s": float("nan")}, "path": Path("/x"), "rows": (1, 2)})
    out, err = capfd.readouterr()
    assert out.count("\n") == 1
    assert json.loads(out) == {"1": {"tok_s": None}, "path": "/x", "rows": [1, 2]}
    assert "a progress line" in err and "a child process writing to fd 1" in err
    print("stdout is back")
    assert capfd.readouterr().out == "stdout is back\n"


def test_output_text_mode_and_file(capfd, tmp_path):
    with bc.output(_args(None)) as figures:
        print("the text")
        figures["x"] = 1
    assert capfd.readouterr().out == "the text\n"
    target = tmp_path / "figures.json"
    with bc.output(_args(str(target))) as figures:
        print("the text")
        figures["x"] = 1
    assert capfd.readouterr().out == "the text\n"
    assert json.loads(target.read_text()) == {"x": 1}


def test_output_prints_nothing_when_the_run_fails(capfd):
    with pytest.raises(ValueError), bc.output(_args("-")) as figures:
        figures["x"] = 1
        raise ValueError("engine died")
    assert capfd.readouterr().out == ""
    print("stdout is back")
    assert capfd.readouterr().out == "stdout is back\n"


def test_one_stage_registry_is_a_registry(tmp_path):
    from server.registry import Registry

    path = bc.one_stage_registry(tmp_path / "stages.yaml", tmp_path / "model", max_model_len=512, dtype="float32")
    raw = yaml.safe_load(path.read_text())
    assert raw["engine"] == {"max_model_len": 512, "dtype": "float32"}
    assert Registry.model_validate(raw).stages["bench"].model == str(tmp_path / "model")


def test_running_stops_the_server_on_error():
    class Server:
        stopped = 0

        def stop(self):
            self.stopped += 1

    server = Server()
    with pytest.raises(KeyError), bc.running(server):
        raise KeyError
    assert server.stopped == 1


HEAVY = (
    "torch",
    "vllm",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "sqlalchemy",
    "scipy",
    "numpy",
    "openai",
    "aiohttp",
    "uvicorn",
    "lm_eval",
)


def test_every_script_parses_help_offers_json_and_loads_nothing_heavy():
    # PYTHONPATH: this checkout's `server` and `models`, not the checkout the editable install names.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = {
        script.name: subprocess.Popen(
            [sys.executable, "-X", "importtime", str(script), "--help"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script in SCRIPTS
    }
    assert len(runs) == 14
    for name, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {err[-2000:]}"
        assert "--json" in out, name
        imported = {line.rsplit("|", 1)[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
        assert not imported & set(HEAVY), f"{name} loads {imported & set(HEAVY)} before parsing its arguments"


def _edits_sys_path(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
        for node in ast.walk(tree)
    )


@pytest.mark.parametrize("script", [*SCRIPTS, REPO / "scripts" / "bench_common.py"], ids=lambda p: p.name)
def test_no_script_edits_sys_path_and_all_use_the_one_client(script):
    tree = ast.parse(script.read_text())
    assert not _edits_sys_path(tree)
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"aiohttp", "openai"}  # httpx, through bench_common, is the one client
    if script.name != "bench_common.py":
        assert "bench_common" in imported
        assert "add_json_argument" in script.read_text()


def test_the_sys_path_check_sees_an_edit():
    assert _edits_sys_path(ast.parse("import sys\nsys.path.insert(0, 'x')"))
    assert not _edits_sys_path(ast.parse("import os\nos.path.join('a')"))
