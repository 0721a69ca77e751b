"""Export formats: which examples ratings become, and that TRL's own trainers take them.

The TRL check is the real thing at toy size: each exported file is loaded with `datasets`, handed to
TRL's DPOTrainer / KTOTrainer / SFTTrainer with a tiny word-level tokenizer (with a chat template)
and a 1-layer Llama, prepared by the trainer, and trained for one step.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from server.export import FORMATS, examples, export_to_file, export_to_hf_dataset
from server.store import Store
from tests.records import chat_record

KENYA = [{"role": "user", "content": "What is the capital of Kenya?"}]
PERU = [{"role": "user", "content": "What is the capital of Peru?"}]


def answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def rated(store: Store, log_answer, question: str, text: str, *ratings: str, stage: str = "sft", **kwargs: Any) -> str:
    """Log an answer and have raters r0, r1, … rate it; returns its id."""
    record = log_answer(question, text, stage=stage, **kwargs)
    for i, rating in enumerate(ratings):
        store.rate(record.id, rating, rater=f"r{i}")
    return record.id


@pytest.fixture
def feedback(store: Store, log_answer) -> Store:
    """Kenya: Nairobi liked twice, Mombasa disliked, a split vote; a preference. Peru: Lima vs Cusco."""
    nairobi = rated(store, log_answer, KENYA[0]["content"], "Nairobi.", "up", "up")
    rated(store, log_answer, KENYA[0]["content"], "Nairobi.", "up")  # same text again: one example
    mombasa = rated(store, log_answer, KENYA[0]["content"], "Mombasa.", "down")
    rated(store, log_answer, KENYA[0]["content"], "Kisumu.", "up", "down")  # net 0: left out
    rated(store, log_answer, PERU[0]["content"], "Lima.", "up", stage="rlhf")
    cusco = log_answer(PERU[0]["content"], "Cusco.", stage="rlhf").id
    store.prefer([mombasa, nairobi], "b", rater="r0")
    lima = store.list_feedback(stage="rlhf")[0][0].response_id
    store.prefer([lima, cusco], "a", rater="r0")
    store.prefer([lima, cusco], "tie", rater="r1")  # no pair
    rated(store, log_answer, "The capital of Kenya is", " Nairobi", "up", kind="completion")  # not chat
    return store


def test_kto(feedback: Store):
    rows = list(examples(feedback, "kto"))
    as_set = {(r["prompt"][0]["content"], r["completion"][0]["content"], r["label"]) for r in rows}
    assert len(rows) == len(as_set) == 3
    assert as_set == {
        (KENYA[0]["content"], "Nairobi.", True),
        (KENYA[0]["content"], "Mombasa.", False),
        (PERU[0]["content"], "Lima.", True),
    }


def test_sft(feedback: Store):
    rows = list(examples(feedback, "sft"))
    assert sorted(rows, key=str) == sorted(
        [
            {"messages": KENYA + answer("Nairobi.")},
            {"messages": PERU + answer("Lima.")},
        ],
        key=str,
    )


def test_dpo_pairs_from_preferences_and_ratings_once_each(feedback: Store):
    rows = list(examples(feedback, "dpo"))
    assert sorted(rows, key=str) == sorted(
        [
            {"prompt": KENYA, "chosen": answer("Nairobi."), "rejected": answer("Mombasa.")},  # preference = ratings
            {"prompt": PERU, "chosen": answer("Lima."), "rejected": answer("Cusco.")},  # preference only
        ],
        key=str,
    )


def test_stage_filter(feedback: Store):
    assert {r["prompt"][0]["content"] for r in examples(feedback, "kto", stage="rlhf")} == {PERU[0]["content"]}
    assert list(examples(feedback, "sft", stage="nope")) == []


def test_text_sent_with_the_rating_is_exported(store: Store, log_answer):
    record = log_answer(KENYA[0]["content"], "Nairobi.", logged=False)
    store.rate(record.id, "up", rater="r0", prompt=KENYA, completion="Nairobi.")
    assert list(examples(store, "sft")) == [{"messages": KENYA + answer("Nairobi.")}]


def test_rankings_give_every_ordered_pair_in_dpo(store: Store, log_answer):
    ids = [
        log_answer(KENYA[0]["content"], t, stage=s).id
        for t, s in [("Nairobi.", "rlhf"), ("Nairobi", "sft"), ("Mombasa.", "base")]
    ]
    store.rank(ids, [[ids[2]], [ids[0], ids[1]]], rater="r0")  # a worse group of two tied answers
    rows = {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in examples(store, "dpo")}
    assert rows == {("Mombasa.", "Nairobi."), ("Mombasa.", "Nairobi")}
    # an A/B preference is a ranking of two: the same pair, once
    store.prefer([ids[2], ids[0]], "a", rater="r1")
    assert len(list(examples(store, "dpo"))) == 2


def test_corrections_in_sft_dpo_and_kto(store: Store, log_answer):
    good = rated(store, log_answer, KENYA[0]["content"], "Nairobi", "up")
    store.correct(good, "Nairobi.", rater="r1")  # a liked answer, polished: SFT takes the polished text
    bad = rated(store, log_answer, PERU[0]["content"], "Cusco.", "down")
    store.correct(bad, "Lima.", rater="r0")
    assert sorted(map(str, examples(store, "sft"))) == sorted(
        map(str, [{"messages": KENYA + answer("Nairobi.")}, {"messages": PERU + answer("Lima.")}])
    )
    assert {
        (r["prompt"][0]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"])
        for r in examples(store, "dpo")
    } == {(KENYA[0]["content"], "Nairobi.", "Nairobi"), (PERU[0]["content"], "Lima.", "Cusco.")}
    kto = {(r["completion"][0]["content"], r["label"]) for r in examples(store, "kto")}
    assert kto == {("Nairobi", True), ("Nairobi.", True), ("Cusco.", False), ("Lima.", True)}


def test_multi_turn_prefixes_are_exported_exactly(store: Store):

    history = [
        {"role": "system", "content": "Be brief."},
        *KENYA,
        {"role": "assistant", "content": "Mombasa."},
        {"role": "user", "content": "Are you sure?"},
    ]
    for i, text in enumerate(["Nairobi, sorry.", "Yes."]):
        store.record_generation(chat_record(history, text, id=f"t2-{i}", client_id="ui"))
    store.rank(["t2-0", "t2-1"], [["t2-0"], ["t2-1"]], rater="r0")
    store.rate("t2-1", "down", rater="r0")
    store.correct("t2-1", "No: Nairobi.", rater="r0")
    for format in FORMATS:
        for row in examples(store, format):
            assert (row["prompt"] if "prompt" in row else row["messages"][:-1]) == history, format


def test_unknown_format(store: Store):
    with pytest.raises(ValueError, match="kto, dpo, sft"):
        examples(store, "ppo")


# ---------------------------------------------------------------------------------------------
# TRL accepts what we export


@pytest.fixture(scope="module")
def tiny_lm():
    """A word-level tokenizer with a chat template, and a 1-layer Llama over its vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["[UNK]", "[PAD]", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    words = "what is the capital of kenya peru nairobi mombasa lima cusco ? .".split()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens(specials)
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=template, eos_token="<|end|>", pad_token="[PAD]", unk_token="[UNK]"
    )
    config = LlamaConfig(
        vocab_size=len(specials) + len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=1,
        eos_token_id=2,
    )
    return tokenizer, LlamaForCausalLM(config)


def _load_jsonl(path: Path, tmp_path: Path):
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


def _train_one_step(format: str, dataset, tiny_lm, tmp_path: Path):
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    tokenizer, model = tiny_lm
    model = copy.deepcopy(model)
    common = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    if format == "dpo":
        trainer = DPOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),
            args=DPOConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    elif format == "kto":
        trainer = KTOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),
            args=KTOConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    return trainer.train_dataset, tokenizer


# TRL's acceptance does not depend on the database: SQLite only.
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("format", FORMATS)
def test_trl_trains_on_the_export(format: str, feedback: Store, tmp_path: Path, tiny_lm):
    from trl.data_utils import is_conversational

    path = tmp_path / f"{format}.jsonl"
    n = export_to_file(feedback, format, path)
    assert n == len(path.read_text().splitlines()) >= 2
    dataset = _load_jsonl(path, tmp_path)
    assert all(is_conversational(row) for row in dataset)

    prepared, tokenizer = _train_one_step(format, dataset, tiny_lm, tmp_path)
    # The trainer's own preparation split prompt and answer where we meant it to.
    by_prompt = {tokenizer.decode(row["prompt_ids"]) if "prompt_ids" in row else None: row for row in prepared}
    kenya_prompt = "<|user|> what is the capital of kenya ? <|end|> <|assistant|>"
    if format == "dpo":
        row = by_prompt[kenya_prompt]
        assert tokenizer.decode(row["chosen_ids"]) == "nairobi . <|end|>"
        assert tokenizer.decode(row["rejected_ids"]) == "mombasa . <|end|>"
    elif format == "kto":
        labels = {tokenizer.decode(r["completion_ids"]): r["label"] for r in prepared}
        assert labels == {"nairobi . <|end|>": True, "mombasa . <|end|>": False, "lima . <|end|>": True}
    else:
        texts = {tokenizer.decode(r["input_ids"]) for r in prepared}
        assert texts == {
            f"{kenya_prompt} nairobi . <|end|>",
            "<|user|> what is the capital of peru ? <|end|> <|assistant|> lima . <|end|>",
        }


@pytest.fixture
def rich_feedback(feedback: Store, log_answer) -> Store:
    """`feedback` plus a ranking of three Kenya answers, a correction, and the same Peru answers again."""
    ids = [
        log_answer(KENYA[0]["content"], t, stage=s).id
        for t, s in [("Nairobi.", "rlhf"), ("Mombasa.", "base"), ("Lima.", "base")]
    ]
    feedback.rank(ids, [[ids[0]], [ids[1], ids[2]]], rater="r2")
    feedback.correct(ids[1], "Nairobi.", rater="r2")
    feedback.correct(ids[2], "Nairobi.", rater="r3")  # the same correction of the same text: one SFT row
    return feedback


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_hf_dataset_dict_split_by_prompt_with_a_card(rich_feedback: Store, tmp_path: Path, tiny_lm):
    import datasets

    assert export_to_hf_dataset(rich_feedback, "dpo", tmp_path / "dpo-ds") == len(list(examples(rich_feedback, "dpo")))
    dd = datasets.load_from_disk(str(tmp_path / "dpo-ds"))
    assert set(dd) == {"train", "test"} and len(dd["train"]) and len(dd["test"])
    train_prompts = {json.dumps(r["prompt"]) for r in dd["train"]}
    assert not train_prompts & {json.dumps(r["prompt"]) for r in dd["test"]}  # no prompt on both sides
    every = dd["train"].to_list() + dd["test"].to_list()
    assert len({json.dumps(r, sort_keys=True) for r in every}) == len(every)  # no exact duplicates
    assert sorted(map(str, every)) == sorted(map(str, examples(rich_feedback, "dpo")))

    card = (tmp_path / "dpo-ds" / "README.md").read_text()
    # sources: preferences (Kenya + Peru), ranking (Nairobi over Mombasa and Lima; the first repeats the
    # A/B pair, so one new row), corrections (Nairobi over Mombasa repeats too; over Lima repeats the ranking)
    assert "| A/B preferences | 2 |" in card and "| rankings | 1 |" in card and "| corrections | 0 |" in card
    assert "| thumbs up/down | 0 |" in card  # the ratings' pair repeats the preference
    assert "| rlhf |" in card and "| base |" in card and "UTC" in card and "DPOTrainer" in card
    assert f"| train | {len(dd['train'])} |" in card
    _train_one_step("dpo", dd["train"], tiny_lm, tmp_path)

    export_to_hf_dataset(rich_feedback, "sft", tmp_path / "sft-ds")
    sft = datasets.load_from_disk(str(tmp_path / "sft-ds"))
    rows = sft["train"].to_list() + sft["test"].to_list()
    assert sorted(map(str, rows)) == sorted(
        map(str, [{"messages": KENYA + answer("Nairobi.")}, {"messages": PERU + answer("Lima.")}])
    )
    assert "| corrections | 0 |" in (tmp_path / "sft-ds" / "README.md").read_text()  # repeats of liked text


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("format", FORMATS)
def test_trl_trains_on_rankings_and_corrections(format: str, rich_feedback: Store, tmp_path: Path, tiny_lm):
    path = tmp_path / f"{format}.jsonl"
    assert export_to_file(rich_feedback, format, path) >= 2
    _train_one_step(format, _load_jsonl(path, tmp_path), tiny_lm, tmp_path)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_cli_writes_the_dataset(rich_feedback: Store, tmp_path: Path):
    import datasets

    from cli.main import main

    out = tmp_path / "kto-ds"
    assert (
        main(
            [
                "feedback",
                "export",
                "--format",
                "kto",
                "--hf-dataset",
                str(out),
                "--database-url",
                rich_feedback.url,
                "--test-fraction",
                "0.5",
            ]
        )
        == 0
    )
    dd = datasets.load_from_disk(str(out))
    assert len(dd["train"]) + len(dd["test"]) == len(list(examples(rich_feedback, "kto")))
    assert "KTOTrainer" in (out / "README.md").read_text()


# -- raters left out below a gold-accuracy threshold (as the leaderboard leaves them out) --------------


@pytest.fixture
def gold_raters(store: Store, log_answer) -> Store:
    """r0 answers gold right (9/10), r1 at random (5/10); r0 likes Nairobi, r1 likes Mombasa and
    prefers it, ranks it first and corrects Nairobi into it."""
    from tests.server.raters_data import gold_campaign, gold_vote

    campaign = gold_campaign(store, questions=10)
    for i in range(10):
        gold_vote(store, campaign, "r0", right=i > 0)
        gold_vote(store, campaign, "r1", right=i % 2 == 0)
    nairobi = log_answer(KENYA[0]["content"], "Nairobi.").id
    mombasa = log_answer(KENYA[0]["content"], "Mombasa.", stage="base").id
    store.rate(nairobi, "up", rater="r0")
    store.rate(mombasa, "up", rater="r1")
    store.prefer([nairobi, mombasa], "b", rater="r1")
    store.rank([nairobi, mombasa], [[mombasa], [nairobi]], rater="r1")
    store.correct(nairobi, "Mombasa.", rater="r1")
    return store


def test_exports_leave_out_raters_below_the_gold_threshold(gold_raters: Store, tmp_path: Path):
    from server.export import RaterFilter

    everyone = {f: list(examples(gold_raters, f)) for f in FORMATS}
    assert any(r["completion"][0]["content"] == "Mombasa." for r in everyone["kto"])
    careful = RaterFilter.read(gold_raters, 0.75)
    assert careful.excluded == ("r1",) and "r1" in careful.describe()
    assert RaterFilter.read(gold_raters, 0.5).excluded == ()
    assert RaterFilter.read(gold_raters, None) == RaterFilter()
    with pytest.raises(ValueError):
        RaterFilter.read(gold_raters, 1.5)
    kept = {f: list(examples(gold_raters, f, raters=careful)) for f in FORMATS}
    nairobi = answer("Nairobi.")
    assert kept["kto"] == [{"prompt": KENYA, "completion": nairobi, "label": True}]
    assert kept["sft"] == [{"messages": KENYA + nairobi}]
    assert kept["dpo"] == []  # every pair was r1's
    assert all("Mombasa." in json.dumps(everyone[f]) for f in FORMATS)
    assert export_to_file(gold_raters, "kto", tmp_path / "kto.jsonl", raters=careful) == 1


def test_the_dataset_card_names_the_raters_left_out(gold_raters: Store, tmp_path: Path):
    from server.export import RaterFilter, dataset_card, rows

    careful = RaterFilter.read(gold_raters, 0.75)
    card = dataset_card("kto", list(rows(gold_raters, "kto", raters=careful)), {"train": 1}, raters=careful)
    assert "below 0.75 were left out: 1 (`r1`)." in card
    assert "None: no gold-accuracy threshold was set." in dataset_card("kto", [], {"train": 0})


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_route_and_cli_take_the_threshold(gold_raters: Store, tmp_path: Path, capsys):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from cli.main import main
    from server.app import install_error_handlers
    from server.routes.feedback import EXCLUDED_HEADER, router
    from server.settings import Settings

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.store, app.state.settings = gold_raters, Settings(data_dir=tmp_path)
    client = TestClient(app)
    r = client.get("/v1/feedback/export", params={"format": "sft", "min_gold_accuracy": 0.75})
    assert r.status_code == 200 and r.headers[EXCLUDED_HEADER] == "r1"
    assert [json.loads(x) for x in r.text.splitlines()] == [{"messages": KENYA + answer("Nairobi.")}]
    everyone = client.get("/v1/feedback/export", params={"format": "sft"})
    assert everyone.headers[EXCLUDED_HEADER] == ""  # r1 corrected Nairobi into Mombasa: its text wins
    assert [json.loads(x) for x in everyone.text.splitlines()] == [{"messages": KENYA + answer("Mombasa.")}]
    bad = client.get("/v1/feedback/export", params={"format": "sft", "min_gold_accuracy": 2})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "query.min_gold_accuracy"

    out = tmp_path / "sft.jsonl"
    argv = ["feedback", "export", "--format", "sft", "--out", str(out), "--database-url", gold_raters.url]
    assert main([*argv, "--min-gold-accuracy", "0.75"]) == 0
    assert "1 rater(s) below gold accuracy 0.75 left out: r1" in capsys.readouterr().out
    assert out.read_text().count("\n") == 1
    assert main([*argv, "--min-gold-accuracy", "7"]) == 2
    assert "--min-gold-accuracy must be between 0 and 1" in capsys.readouterr().err
