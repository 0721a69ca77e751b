"""The API as real clients use it, against the real server (`live_server`: real vLLM on the tiny
family): the official `openai` client (sync and async) for prompt scoring, prompt lists, structured
outputs, tools, logit_bias, usage and /tokenize; `langchain-openai` (invoke, stream, batch,
structured output, tools); and lm-evaluation-harness on local task files (a loglikelihood task via
`local-completions`, a generation task via `local-chat-completions`)."""

import asyncio
import json
import math
import re

import httpx
import jsonschema
import openai
import pytest

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "What is the capital of Kenya?"}]
# Strings are patterned: the tiny model's byte-level vocabulary otherwise yields raw control bytes
# inside strings (xgrammar reads its custom tokenizer's byte tokens as literal characters).
CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
        "population": {"type": "integer", "minimum": 0, "maximum": 99999999},
    },
    "required": ["city", "population"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "pattern": "^[A-Za-z]{1,10}$"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=0)


@pytest.fixture
def aclient(live_server):
    """A factory: an async client belongs to the event loop it is used on (one per asyncio.run)."""
    return lambda: openai.AsyncOpenAI(base_url=f"{live_server.url}/v1", api_key="none", max_retries=0)


# -- prompt logprobs, scoring, prompt lists --------------------------------------------------------


def test_echo_scores_the_prompt_and_agrees_with_what_generation_reported(client, live_server):
    prompt = "The capital of Kenya is"
    gen = client.completions.create(
        model="sft", prompt=prompt, max_tokens=6, temperature=0, logprobs=1, extra_body={"ignore_eos": True}
    )
    full = prompt + gen.choices[0].text
    ids = httpx.post(f"{live_server.url}/tokenize", json={"model": "sft", "prompt": full}).json()["tokens"]
    scored = client.completions.create(model="sft", prompt=ids, max_tokens=0, echo=True, logprobs=1)
    choice = scored.choices[0]
    lp = choice.logprobs
    assert choice.text == full and "".join(lp.tokens) == full
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.token_logprobs) == len(ids) and scored.usage.completion_tokens == 0
    # The same tokens, scored as a prompt, have the logprobs generation reported for them.
    generated = gen.choices[0].logprobs.token_logprobs
    assert lp.token_logprobs[-len(generated) :] == pytest.approx(generated, abs=2e-3)
    assert all(v <= 0 for v in lp.token_logprobs[1:])


def test_echo_with_generation_and_a_list_of_prompts(client):
    prompts = ["The capital of Kenya is", "Hello there"]
    batch = client.completions.create(model="base", prompt=prompts, max_tokens=4, temperature=0, echo=True, logprobs=0)
    assert [c.index for c in batch.choices] == [0, 1]
    for prompt, choice in zip(prompts, batch.choices):
        alone = client.completions.create(model="base", prompt=prompt, max_tokens=4, temperature=0)
        assert choice.text == prompt + alone.choices[0].text
        assert choice.logprobs.token_logprobs[0] is None
    assert batch.usage.completion_tokens == 8


def test_token_id_prompts_equal_their_text(client, live_server):
    ids = httpx.post(f"{live_server.url}/v1/tokenize", json={"model": "base", "prompt": "Hello there"}).json()["tokens"]
    by_ids = client.completions.create(model="base", prompt=[ids, ids], max_tokens=5, temperature=0)
    by_text = client.completions.create(model="base", prompt="Hello there", max_tokens=5, temperature=0)
    assert [c.text for c in by_ids.choices] == [by_text.choices[0].text] * 2


def test_chat_prompt_logprobs_extension(client):
    chat = client.chat.completions.create(
        model="base", messages=MESSAGES, max_tokens=2, temperature=0, extra_body={"prompt_logprobs": 1}
    )
    prompt_lp = chat.model_extra["prompt_logprobs"]
    assert prompt_lp[0] is None and len(prompt_lp) == chat.usage.prompt_tokens
    for position in prompt_lp[1:]:
        ranks = sorted(v["rank"] for v in position.values())
        assert 1 in ranks and all(v["logprob"] <= 0 for v in position.values())


# -- structured outputs ----------------------------------------------------------------------------


def test_json_schema_response_format_is_followed(client):
    chat = client.chat.completions.create(
        model="base",
        messages=MESSAGES,
        max_tokens=60,
        temperature=1.0,
        seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}},
    )
    jsonschema.validate(json.loads(chat.choices[0].message.content), CITY)


def test_json_object_regex_choice_and_grammar(client):
    obj = client.chat.completions.create(
        model="sft", messages=MESSAGES, max_tokens=40, temperature=0.8, seed=1, response_format={"type": "json_object"}
    )
    text = obj.choices[0].message.content
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert text.lstrip().startswith("{")
    regex = client.completions.create(
        model="base",
        prompt="Year:",
        max_tokens=10,
        temperature=1.0,
        seed=2,
        extra_body={"structured_outputs": {"regex": "(19|20)[0-9]{2}"}},
    )
    assert re.fullmatch("(19|20)[0-9]{2}", regex.choices[0].text)
    choice = client.chat.completions.create(
        model="base",
        messages=MESSAGES,
        max_tokens=10,
        temperature=1.0,
        extra_body={"structured_outputs": {"choice": ["Nairobi", "Paris"]}},
    )
    assert choice.choices[0].message.content in ("Nairobi", "Paris")
    grammar = 'root ::= "yes" | "no" | "maybe"'
    answer = client.completions.create(
        model="base",
        prompt="Well?",
        max_tokens=5,
        temperature=1.0,
        extra_body={"structured_outputs": {"grammar": grammar}},
    )
    assert answer.choices[0].text in ("yes", "no", "maybe")


@pytest.mark.parametrize(
    "extra",
    [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
        {"extra_body": {"structured_outputs": {"grammar": "root ::= (((("}}},
        {"extra_body": {"structured_outputs": {"regex": "(unclosed"}}},
    ],
)
def test_invalid_constraints_are_400(client, extra):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=5, **extra)
    assert info.value.body["param"] in ("response_format", "structured_outputs")


def test_streamed_structured_output_and_continuous_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="base",
            messages=MESSAGES,
            max_tokens=60,
            temperature=0.7,
            seed=5,
            stream=True,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
            stream_options={"include_usage": True, "continuous_usage_stats": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    jsonschema.validate(json.loads(text), CITY)
    counts = [c.usage.completion_tokens for c in chunks if c.choices]
    assert counts == sorted(counts) and counts[-1] == chunks[-1].usage.completion_tokens


# -- tools -----------------------------------------------------------------------------------------


def test_named_tool_choice_returns_a_valid_call(client):
    chat = client.chat.completions.create(
        model="base",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        max_tokens=40,
        temperature=0.5,
        seed=1,
    )
    message = chat.choices[0].message
    call = message.tool_calls[0]
    assert call.function.name == "weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # the call and its result go back into the conversation and render through the template
    follow = client.chat.completions.create(
        model="base",
        max_tokens=3,
        temperature=0,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "12C"},
        ],
    )
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_required_tool_choice_streams_tool_call_deltas(client):
    chunks = list(
        client.chat.completions.create(
            model="base",
            messages=[{"role": "user", "content": "Weather?"}],
            tools=[WEATHER],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=60,
            temperature=0.5,
            seed=2,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "weather"
    jsonschema.validate(
        json.loads("".join(tc.function.arguments or "" for tc in calls)), WEATHER["function"]["parameters"]
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_auto_tool_choice_answers_with_text_or_calls(client):
    chat = client.chat.completions.create(model="base", messages=MESSAGES, tools=[WEATHER], max_tokens=8, temperature=0)
    message = chat.choices[0].message
    assert message.content is not None or message.tool_calls  # a random model rarely calls: text it is


def test_a_stage_without_tool_support_refuses_tools(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="sft", messages=MESSAGES, tools=[WEATHER], max_tokens=4)
    assert info.value.body["param"] == "tools" and "sft" in info.value.body["message"]


# -- the rest of the request fields ----------------------------------------------------------------


def test_logit_bias_steers_greedy_decoding(client, live_server):
    token = httpx.post(
        f"{live_server.url}/tokenize", json={"model": "base", "prompt": " Paris", "add_special_tokens": False}
    ).json()["tokens"][-1]
    text = (
        client.completions.create(
            model="base",
            prompt="The capital of France is",
            max_tokens=3,
            temperature=0,
            logit_bias={str(token): 100},
            user="tester-1",
        )
        .choices[0]
        .text
    )
    plain = (
        client.completions.create(model="base", prompt="The capital of France is", max_tokens=3, temperature=0)
        .choices[0]
        .text
    )
    one = httpx.post(f"{live_server.url}/detokenize", json={"model": "base", "tokens": [token]}).json()["prompt"]
    assert text == one * 3 and plain != text


def test_unhonoured_openai_fields_are_400_naming_them(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=2, modalities=["text", "audio"])
    assert info.value.body["param"] == "modalities"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="base", prompt="x", max_tokens=2, suffix="!")
    assert info.value.body["param"] == "suffix"


def test_tokenize_and_detokenize(client, live_server):
    tokenized = httpx.post(
        f"{live_server.url}/tokenize", json={"model": "base", "messages": MESSAGES, "return_token_strs": True}
    ).json()
    chat = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=1)
    assert tokenized["count"] == len(tokenized["tokens"]) == chat.usage.prompt_tokens
    assert tokenized["max_model_len"] == 512 and len(tokenized["token_strs"]) == tokenized["count"]
    text = httpx.post(f"{live_server.url}/v1/detokenize", json={"model": "base", "tokens": tokenized["tokens"]})
    assert text.json()["prompt"] == "<|user|>What is the capital of Kenya?<|end|><|assistant|>"
    bad = httpx.post(f"{live_server.url}/detokenize", json={"model": "base", "tokens": [10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    assert httpx.post(f"{live_server.url}/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404


def test_async_client_scores_and_constrains_concurrently(aclient):
    async def run():
        aclient_ = aclient()
        scoring = aclient_.completions.create(
            model="base", prompt=["Hello there", "I am a small model"], max_tokens=0, echo=True, logprobs=0
        )
        constrained = aclient_.chat.completions.create(
            model="sft",
            messages=MESSAGES,
            max_tokens=60,
            temperature=0.9,
            seed=4,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
        )
        return await asyncio.gather(scoring, constrained)

    scored, constrained = asyncio.run(run())
    assert [c.text for c in scored.choices] == ["Hello there", "I am a small model"]
    assert all(math.isfinite(v) for c in scored.choices for v in c.logprobs.token_logprobs[1:])
    jsonschema.validate(json.loads(constrained.choices[0].message.content), CITY)


# -- LangChain -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_model(live_server):
    from langchain_openai import ChatOpenAI

    def make(stage="base", **kw):
        return ChatOpenAI(
            **{
                "model": stage,
                "base_url": f"{live_server.url}/v1",
                "api_key": "none",
                "max_retries": 0,
                "temperature": 0,
                "max_tokens": 12,
                **kw,
            }
        )

    return make


def test_langchain_invoke_stream_and_batch(chat_model):
    llm = chat_model("sft")
    answer = llm.invoke("What is the capital of Kenya?")
    assert answer.content and answer.response_metadata["model_name"] == "sft"
    streamed = "".join(chunk.content for chunk in llm.stream("What is the capital of Kenya?"))
    assert streamed == answer.content
    batch = llm.batch(["What is the capital of Kenya?", "Hello"])
    assert batch[0].content == answer.content and len(batch) == 2


def test_langchain_structured_output_json_schema(chat_model):
    from pydantic import BaseModel, Field

    class City(BaseModel):
        """A city and its population."""

        city: str = Field(pattern="^[A-Za-z ]{1,12}$")
        population: int = Field(ge=0, le=99999999)

    result = (
        chat_model("base", max_tokens=60, temperature=0.8, seed=1)
        .with_structured_output(City, method="json_schema", strict=True)
        .invoke("Name a city.")
    )
    assert isinstance(result, City)


def test_langchain_bind_tools(chat_model):
    from langchain_core.tools import tool

    @tool
    def weather(day: int) -> str:
        """Weather forecast, `day` days from now."""
        return "12C"

    llm = chat_model("base", max_tokens=40, temperature=0.5, seed=1)
    message = llm.bind_tools([weather], tool_choice="weather").invoke("Weather in Paris?")
    assert message.tool_calls[0]["name"] == "weather" and isinstance(message.tool_calls[0]["args"], dict)
    with pytest.raises(openai.BadRequestError):
        chat_model("sft").bind_tools([weather]).invoke("Weather in Paris?")


# -- lm-evaluation-harness -------------------------------------------------------------------------

CAPITALS = [("Kenya", "Nairobi"), ("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima")]


@pytest.fixture(scope="module")
def lm_eval_tasks(tmp_path_factory):
    """Two tasks from local JSON lines (no hub): multiple choice by loglikelihood, and generation."""
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    names = [c for _, c in CAPITALS]
    rows = [
        {"country": country, "choices": names, "answer": names.index(capital), "capital": capital}
        for country, capital in CAPITALS
    ]
    data = folder / "capitals.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        "task: stagechat_capitals_mc\n" + common + "output_type: multiple_choice\n"
        'doc_to_text: "The capital of {{country}} is"\ndoc_to_choice: "{{choices}}"\n'
        'target_delimiter: " "\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n'
    )
    (folder / "gen.yaml").write_text(
        "task: stagechat_capitals_gen\n" + common + "output_type: generate_until\n"
        'doc_to_text: "What is the capital of {{country}}?"\ndoc_to_target: "{{capital}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    return folder


def run_lm_eval(folder, task, model, model_args, **kw):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[task],
        task_manager=TaskManager(include_path=str(folder)),
        log_samples=True,
        **kw,
    )


def test_lm_eval_loglikelihood_task_via_local_completions(live_server, lm_eval_tasks, tiny_family, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results = run_lm_eval(
        lm_eval_tasks,
        "stagechat_capitals_mc",
        "local-completions",
        {
            "model": "base",
            "base_url": f"{live_server.url}/v1/completions",
            "tokenizer": str(tiny_family / "base"),
            "tokenizer_backend": "huggingface",
            "num_concurrent": 2,
            "max_retries": 1,
        },
    )
    acc = results["results"]["stagechat_capitals_mc"]["acc,none"]
    assert 0 <= acc <= 1
    samples = results["samples"]["stagechat_capitals_mc"]
    assert len(samples) == len(CAPITALS)
    scores = [resp[0][0] for resp in samples[0]["resps"]]
    assert len(scores) == len(CAPITALS) and all(math.isfinite(s) and s < 0 for s in scores)
    assert len(set(scores)) > 1  # each answer has its own loglikelihood


def test_lm_eval_generation_task_via_local_chat_completions(live_server, lm_eval_tasks, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    results = run_lm_eval(
        lm_eval_tasks,
        "stagechat_capitals_gen",
        "local-chat-completions",
        {"model": "sft", "base_url": f"{live_server.url}/v1/chat/completions", "num_concurrent": 2, "max_retries": 1},
        apply_chat_template=True,
    )
    assert 0 <= results["results"]["stagechat_capitals_gen"]["exact_match,none"] <= 1
    samples = results["samples"]["stagechat_capitals_gen"]
    assert len(samples) == len(CAPITALS) and all(isinstance(s["resps"][0][0], str) for s in samples)


def test_concurrent_scoring_on_the_lora_engine_leaves_it_serving(aclient, client):
    """Prompt logprobs in a step shared with other requests used to kill vLLM's CPU LoRA engine
    (server/vllm_patches.py)."""

    async def run():
        client_ = aclient()
        scoring = [
            client_.completions.create(
                model=stage, prompt="The capital of Kenya is Nairobi", max_tokens=0, echo=True, logprobs=0
            )
            for stage in ("base", "sft", "base", "sft")
        ]
        chatting = [client_.chat.completions.create(model="sft", messages=MESSAGES, max_tokens=8) for _ in range(4)]
        return await asyncio.gather(*scoring, *chatting)

    results = asyncio.run(run())
    base, sft = results[0].choices[0].logprobs.token_logprobs, results[1].choices[0].logprobs.token_logprobs
    assert base == pytest.approx(results[2].choices[0].logprobs.token_logprobs, abs=2e-3)
    assert sft == pytest.approx(results[3].choices[0].logprobs.token_logprobs, abs=2e-3)
    assert base[1:] != pytest.approx(sft[1:], abs=1e-3)  # the adapter changes the scores
    assert client.completions.create(model="base", prompt="Hello", max_tokens=2).choices[0].text is not None
