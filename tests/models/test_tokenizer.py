"""The demo tokenizer: byte-level BPE whose chat template ends assistant turns with eos."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from models.demo import corpus
from models.demo.tokenizer import BOS, CHAT_TEMPLATE, EOS, ROLE_TOKENS, save_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = corpus.prose_documents(300) + [
        m["content"] for row in corpus.sft_examples(1) for m in row["prompt"] + row["completion"]
    ]
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_tokenizer(texts, 600), out)
    return AutoTokenizer.from_pretrained(out)  # what transformers, TRL and vLLM will load


def test_special_tokens_are_single_ids(tokenizer):
    for token in [BOS, EOS, *ROLE_TOKENS]:
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1
    assert tokenizer.eos_token == EOS and tokenizer.bos_token == BOS
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)


def test_plain_encoding_starts_with_bos_and_round_trips_any_text(tokenizer):
    text = "The capital of Côte d'Ivoire is Yamoussoukro. 東京"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_chat_template_renders_turns_and_generation_prompt(tokenizer):
    messages = [{"role": "user", "content": "What is the capital of Kenya?"}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|bos|><|user|>What is the capital of Kenya?<|end|><|assistant|>"


def test_assistant_turn_ends_with_eos_and_prompt_is_a_token_prefix(tokenizer):
    prompt = [{"role": "user", "content": "What is the capital of Kenya?"}]
    full = prompt + [{"role": "assistant", "content": "The capital of Kenya is Nairobi."}]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(full, return_dict=True)["input_ids"]
    assert full_ids[-1] == tokenizer.eos_token_id  # generation stops where the answer ends
    assert full_ids[: len(prompt_ids)] == prompt_ids  # TRL's completion mask relies on this
    assert full_ids.count(tokenizer.bos_token_id) == 1


def test_template_is_saved_where_every_loader_finds_it(tmp_path):
    tok = train_tokenizer(["a few words of text"] * 10, 300)
    save_tokenizer(tok, tmp_path)
    import json

    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
