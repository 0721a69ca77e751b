"""The sampler lab's arithmetic (`server.sampler_lab`) against vLLM 0.32's own sampler code (its
penalty, temperature, min-p and top-k/top-p functions on the CPU, no engine): with the whole
vocabulary in the window the lab's figures are vLLM's within 1e-3; with a top-20 window and the
tail modelled, top-k inside the window keeps them exact. On a live engine:
test_sampler_lab_vllm.py (no sampled token outside the kept set)."""

import math

import pytest
import torch

from server.sampler_lab import TAIL, LabSettings, run

VOCAB = 64


def vllm_distribution(logits: torch.Tensor, s: LabSettings, prompt: list[int], output: list[int]) -> torch.Tensor:
    """vLLM's sampler steps on one row of logits: the probabilities it samples from."""
    from vllm.model_executor.layers.utils import apply_penalties
    from vllm.v1.sample.logits_processor.builtin import MinPLogitsProcessor
    from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p_pytorch
    from vllm.v1.sample.sampler import Sampler

    x = logits.clone().unsqueeze(0)
    for token, bias in s.logit_bias:
        x[0, token] += bias

    def pad(ids):  # padded with the vocabulary size, as vLLM pads
        return torch.tensor([ids + [VOCAB]], dtype=torch.long)

    x = apply_penalties(
        x,
        pad(prompt),
        pad(output),
        torch.tensor([s.presence_penalty]),
        torch.tensor([s.frequency_penalty]),
        torch.tensor([s.repetition_penalty]),
    )
    x = Sampler.apply_temperature(x, torch.tensor([s.temperature]), all_random=True)
    if s.min_p > 0:
        min_p = MinPLogitsProcessor.__new__(MinPLogitsProcessor)
        min_p.min_p_count, min_p.min_p = 1, torch.tensor([[s.min_p]])
        x = min_p.apply(x)
    k = torch.tensor([s.top_k]) if s.top_k > 0 else None
    p = torch.tensor([s.top_p]) if s.top_p < 1 else None
    x = apply_top_k_top_p_pytorch(x, k, p)
    return x.softmax(dim=-1)[0]


def lab_distribution(logits: torch.Tensor, s: LabSettings, prompt, output, window: int = VOCAB):
    raw = logits.log_softmax(-1)
    order = raw.argsort(descending=True)[:window].tolist()
    lab = run(
        [(t, f"t{t}", raw[t].item()) for t in order],
        s,
        sampled_id=order[0],
        vocab_size=VOCAB,
        prompt_ids=prompt,
        output_ids=output,
    )
    return lab, {r.token_id: r.probability for r in lab.steps[-1].rows}


SETTINGS = [
    LabSettings(temperature=0.7, top_k=10, top_p=0.8, min_p=0.05),
    LabSettings(temperature=1.3, top_p=0.9),
    LabSettings(temperature=0.5, min_p=0.2),
    LabSettings(
        temperature=1.0, top_k=5, frequency_penalty=0.8, presence_penalty=0.5, logit_bias=((3, 4.0), (7, -2.0))
    ),
    LabSettings(temperature=0.9, top_k=1),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_whole_vocabulary_matches_vllm(settings):
    torch.manual_seed(0)
    logits = torch.randn(VOCAB) * 3
    prompt, output = [1, 2, 3], [3, 5, 5, 9]
    want = vllm_distribution(logits, settings, prompt, output)
    lab, got = lab_distribution(logits, settings, prompt, output)
    kept = {t for t in range(VOCAB) if want[t] > 0}
    assert set(got) == kept
    for t in kept:
        assert got[t] == pytest.approx(want[t].item(), abs=1e-3)
    assert lab.steps[0].name.startswith("raw") and lab.tail_mass < 1e-6


def test_the_steps_run_in_vllms_order_and_say_what_they_cut():
    torch.manual_seed(1)
    logits = torch.randn(VOCAB) * 3
    lab, _ = lab_distribution(
        logits,
        LabSettings(temperature=0.7, top_k=10, top_p=0.8, min_p=0.0001, presence_penalty=0.5, logit_bias=((3, 1.0),)),
        [1],
        [3],
    )
    assert [s.name.split()[0] for s in lab.steps] == [
        "raw",
        "logit",
        "penalties",
        "temperature",
        "min-p",
        "top-k",
        "top-p",
    ]
    top_k = lab.steps[5]
    assert len(top_k.rows) == 10 and len(top_k.cut) + 10 == len(lab.steps[4].rows)
    assert 0 < top_k.mass_kept <= 1 and lab.steps[3].mass_kept == 1.0
    for step in lab.steps:
        assert sum(r.probability * r.count for r in step.rows) == pytest.approx(1.0)


def test_a_top20_window_with_top_k_inside_it_is_exact():
    torch.manual_seed(2)
    logits = torch.randn(VOCAB)  # flat: most mass is outside the top 20
    s = LabSettings(temperature=0.8, top_k=8, top_p=0.9, min_p=0.05)
    want = vllm_distribution(logits, s, [], [])
    lab, got = lab_distribution(logits, s, [], [], window=20)
    assert lab.tail_mass > 0.2 and TAIL not in got
    assert got == pytest.approx({t: want[t].item() for t in got}, abs=1e-3)
    assert {t for t in range(VOCAB) if want[t] > 0} == set(got)


def test_the_tail_is_modelled_and_flagged():
    torch.manual_seed(3)
    logits = torch.randn(VOCAB)
    lab, got = lab_distribution(logits, LabSettings(temperature=0.8, top_p=0.95), [], [], window=20)
    assert TAIL in got and any("tail" in n for n in lab.notes)
    assert sum(r.probability * r.count for r in lab.steps[-1].rows) == pytest.approx(1.0)


def test_greedy_keeps_the_argmax_only():
    logits = torch.tensor([0.0, 2.0, 1.0] + [-5.0] * (VOCAB - 3))
    lab, got = lab_distribution(logits, LabSettings(temperature=0.0), [], [])
    assert got == {1: 1.0} and lab.steps[-1].sampled_rank == 1 and len(lab.steps[-1].cut) == VOCAB - 1


def test_repetition_penalty_is_flagged_approximate():
    logits = torch.randn(VOCAB)
    lab, _ = lab_distribution(logits, LabSettings(repetition_penalty=1.3), [0, 1], [])
    assert any("repetition_penalty" in n for n in lab.notes)


def test_the_sampled_token_rank_and_body():
    logits = torch.tensor([3.0, 2.0, 1.0] + [-9.0] * (VOCAB - 3))
    raw = logits.log_softmax(-1)
    lab = run([(t, f"t{t}", raw[t].item()) for t in range(VOCAB)], LabSettings(top_k=2), sampled_id=1, vocab_size=VOCAB)
    assert lab.steps[-1].sampled_rank == 2
    assert lab.steps[-1].sampled_probability == pytest.approx(math.exp(2) / (math.exp(3) + math.exp(2)))
    body = lab.body()
    assert body["steps"][-1]["name"] == "top-k 2" and len(body["steps"][-1]["tokens"]) == 2


# -- the sampler fields' bounds on the API ---------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("top_k", -2), ("min_p", 1.5), ("top_p", 0), ("temperature", -1)])
def test_out_of_range_sampler_fields_are_400s_naming_them(fake_app, field, value):
    from tests.conftest import ready_client

    with ready_client(*fake_app()) as client:
        r = client.post(
            "/v1/chat/completions", json={"model": "base", "messages": [{"role": "user", "content": "x"}], field: value}
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == field
        ok = client.post(
            "/v1/chat/completions",
            json={"model": "base", "max_tokens": 1, "top_k": -1, "messages": [{"role": "user", "content": "x"}]},
        )
        assert ok.status_code == 200  # -1 is vLLM's "off", as 0 is
        assert client.pool.built[("fake/base", None)].requests[-1][1].top_k == 0


def test_from_a_top20_window_the_kept_set_is_vllms_across_many_distributions():
    # the live check's situation (raw top-20 logprobs, top-k inside them), over flat and peaked logits
    s = LabSettings(temperature=0.8, top_k=8, top_p=0.9, min_p=0.05)
    for trial in range(200):
        torch.manual_seed(trial)
        logits = torch.randn(VOCAB) * (0.5 + trial % 5)
        want = vllm_distribution(logits, s, [], [])
        _, got = lab_distribution(logits, s, [], [], window=20)
        assert set(got) == {t for t in range(VOCAB) if want[t] > 0}, trial
