"""The draft starts as the base with layers dropped: same vocabulary, same width, the kept layers' weights."""

import torch
from transformers import AutoModelForCausalLM

from models.demo.draft import layer_dropped_copy
from models.tiny import make_tiny_checkpoint


def test_the_draft_keeps_the_bases_embeddings_norm_and_chosen_layers(tmp_path):
    make_tiny_checkpoint(tmp_path / "base", layers=3)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    draft = layer_dropped_copy(tmp_path / "base", (0, 2))

    assert draft.config.num_hidden_layers == 2
    assert draft.config.hidden_size == base.config.hidden_size
    assert torch.equal(draft.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert torch.equal(draft.model.norm.weight, base.model.norm.weight)
    for mine, theirs in ((0, 0), (1, 2)):
        assert torch.equal(
            draft.model.layers[mine].mlp.down_proj.weight, base.model.layers[theirs].mlp.down_proj.weight
        )
        assert torch.equal(
            draft.model.layers[mine].self_attn.q_proj.weight, base.model.layers[theirs].self_attn.q_proj.weight
        )
    ids = torch.tensor([[1, 5, 7, 9]])
    assert not torch.equal(draft(ids).logits, base(ids).logits)  # a layer really is gone
