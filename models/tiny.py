"""A random tiny Llama checkpoint (and a LoRA adapter for it), made in seconds.

For integration tests and benchmarks that need a real vLLM engine but no trained model: the
weights are random, so the text is gibberish, but every serving path (chat template, logprobs,
seeds, adapters, speculation) runs for real. The demo family (`models.demo`) is the trained one.
"""

from __future__ import annotations

from pathlib import Path

# Tools render in the Hermes format (vLLM's "hermes" tool parser reads the calls back); without tools
# the prompt is the plain turn list.
CHAT_TEMPLATE = (
    '{% if tools %}<|system|>Call a tool as <tool_call>{"name": ..., "arguments": {...}}</tool_call>. '
    "Tools: {{ tools | tojson }}<|end|>{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}<tool_call>"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}</tool_call>"
    "{% endfor %}{% else %}{{ m['content'] }}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
TEXT = (
    "The capital of Kenya is Nairobi. The capital of France is Paris. The capital of Japan is Tokyo. "
    "Hello there, how are you today? I am a small model and I know a few words. "
) * 20


def make_tokenizer(out: Path, *, vocab_size: int = 512, chat_template: str | None = CHAT_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>", pad_token="<|pad|>")
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(out)
    return fast


def make_tiny_checkpoint(
    out: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 2,
    seed: int = 0,
    chat_template: str | None = CHAT_TEMPLATE,
    max_positions: int = 512,
) -> Path:
    """A random Llama with head_dim = hidden / heads (vLLM's CPU attention wants 32 or 64)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(out, chat_template=chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so samples differ visibly by seed
        model.lm_head.weight.mul_(20)
    model.save_pretrained(out)
    return out


def make_tiny_adapter(base: Path, out: Path, *, rank: int = 8, seed: int = 1) -> Path:
    """A random (non-zero) LoRA adapter on `base`, so its outputs differ from the base's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank * 4,
        target_modules=["q_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(out)
    return Path(out)
