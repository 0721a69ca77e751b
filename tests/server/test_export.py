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

KENYA = [{"role": "user", "content": "What is the capital of Kenya?"}]
PERU = [{"role": "user", "content": "What is the capital of Peru?"}]


def answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def rated(store: Store, log_answer, question: str, text: str, *ratings: str, stage: str = "sft",
          **kwargs: Any) -> str:
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
    assert sorted(rows, key=str) == sorted([
        {"messages": KENYA + answer("Nairobi.")},
        {"messages": PERU + answer("Lima.")},
    ], key=str)


def test_dpo_pairs_from_preferences_and_ratings_once_each(feedback: Store):
    rows = list(examples(feedback, "dpo"))
    assert sorted(rows, key=str) == sorted([
        {"prompt": KENYA, "chosen": answer("Nairobi."), "rejected": answer("Mombasa.")},  # preference = ratings
        {"prompt": PERU, "chosen": answer("Lima."), "rejected": answer("Cusco.")},  # preference only
    ], key=str)


def test_stage_filter(feedback: Store):
    assert {r["prompt"][0]["content"] for r in examples(feedback, "kto", stage="rlhf")} == {PERU[0]["content"]}
    assert list(examples(feedback, "sft", stage="nope")) == []


def test_text_sent_with_the_rating_is_exported(store: Store, log_answer):
    record = log_answer(KENYA[0]["content"], "Nairobi.", logged=False)
    store.rate(record.id, "up", rater="r0", prompt=KENYA, completion="Nairobi.")
    assert list(examples(store, "sft")) == [{"messages": KENYA + answer("Nairobi.")}]


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
    template = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, eos_token="<|end|>",
                                        pad_token="[PAD]", unk_token="[UNK]")
    config = LlamaConfig(vocab_size=len(specials) + len(words), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=1, eos_token_id=2)
    return tokenizer, LlamaForCausalLM(config)


def _load_jsonl(path: Path, tmp_path: Path):
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))


def _train_one_step(format: str, dataset, tiny_lm, tmp_path: Path):
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, SFTConfig, SFTTrainer

    tokenizer, model = tiny_lm
    model = copy.deepcopy(model)
    common = dict(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                  report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True)
    if format == "dpo":
        trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=DPOConfig(**common),
                             train_dataset=dataset, processing_class=tokenizer)
    elif format == "kto":
        trainer = KTOTrainer(model=model, ref_model=copy.deepcopy(model), args=KTOConfig(**common),
                             train_dataset=dataset, processing_class=tokenizer)
    else:
        trainer = SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=dataset,
                             processing_class=tokenizer)
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
        assert texts == {f"{kenya_prompt} nairobi . <|end|>",
                         "<|user|> what is the capital of peru ? <|end|> <|assistant|> lima . <|end|>"}


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_hf_dataset_export_matches_the_file(feedback: Store, tmp_path: Path):
    import datasets

    export_to_file(feedback, "dpo", tmp_path / "dpo.jsonl")
    assert export_to_hf_dataset(feedback, "dpo", tmp_path / "dpo-ds") == 2
    from_disk = datasets.load_from_disk(str(tmp_path / "dpo-ds"))
    from_file = [json.loads(line) for line in (tmp_path / "dpo.jsonl").read_text().splitlines()]
    assert from_disk.to_list() == from_file
