"""The grouped LoRA ops give vLLM's CPU ops' results (index -1: no LoRA term, as an empty slot gives),
for shrink, expand and expand-slice, with and without accumulation; the wrapper's fused
`add_lora_linear` gives vLLM's method's result for every mix of adapters in a step, and again after
new weights are loaded into a slot; register() swaps them in."""

import pytest
import torch

from server import lora_ops

vllm_ops = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

SLOTS, RANK, WIDTH, OUT = 4, 16, 64, 96


def stacked(out: int, inner: int) -> torch.Tensor:
    w = torch.randn(SLOTS, 1, out, inner)
    w[-1] = 0  # the empty last slot, which vLLM's own op reads for index -1
    return w


@pytest.mark.parametrize("indices", [[0] * 8, [-1] * 8, [1] * 8, [0, 1, -1, 2, 1, 0, -1, 2], [2] * 3 + [-1] * 5])
def test_grouped_ops_match_vllms(indices):
    torch.manual_seed(0)
    idx = torch.tensor(indices)
    x = torch.randn(len(indices), WIDTH)
    a = stacked(RANK, WIDTH)
    ours, theirs = torch.zeros(len(indices), RANK), torch.zeros(len(indices), RANK)
    lora_ops.bgmv_shrink(x, a, ours, idx, 0.5)
    vllm_ops.bgmv_shrink(x, a, theirs, idx, 0.5)
    torch.testing.assert_close(ours, theirs)

    b = stacked(OUT, RANK)
    for add in (True, False):
        base = torch.randn(len(indices), OUT)
        ours, theirs = base.clone(), base.clone()
        lora_ops.bgmv_expand(x[:, :RANK], b, ours, idx, add)
        vllm_ops.bgmv_expand(x[:, :RANK], b, theirs, idx, add)
        torch.testing.assert_close(ours, theirs)

        wide = torch.randn(len(indices), OUT + 32)
        ours, theirs = wide.clone(), wide.clone()
        lora_ops.bgmv_expand_slice(x[:, :RANK], b, ours, idx, 16, OUT, add)
        vllm_ops.bgmv_expand_slice(x[:, :RANK], b, theirs, idx, 16, OUT, add)
        torch.testing.assert_close(ours, theirs)


def test_prefill_goes_through_the_grouped_ops_once_registered(monkeypatch):
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (vllm_ops, punica_cpu):  # undone after the test
        for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
            monkeypatch.setattr(module, name, getattr(module, name))
    for name in ("update_metadata", "add_lora_linear"):
        monkeypatch.setattr(punica_cpu.PunicaWrapperCPU, name, getattr(punica_cpu.PunicaWrapperCPU, name))
    monkeypatch.setattr(lora_ops, "_vllm", lora_ops._Originals())
    monkeypatch.setenv(lora_ops.ENV, "1")
    calls = []
    monkeypatch.setattr(lora_ops, "_grouped", lambda *a, _g=lora_ops._grouped: calls.append(1) or _g(*a))
    lora_ops.register()
    assert punica_cpu.bgmv_shrink is lora_ops.bgmv_shrink
    assert punica_cpu.PunicaWrapperCPU.add_lora_linear is lora_ops.add_lora_linear
    x, a = torch.randn(5, WIDTH), stacked(RANK, WIDTH)
    y = torch.zeros(5, RANK)
    # sgmv (prefill): two sequences of 2 and 3 tokens on adapters 1 and -1
    vllm_ops.sgmv_shrink(x, a, y, torch.tensor([0, 2]), torch.tensor([2, 3]), torch.tensor([1, -1]), 2, 3, 5, 1.0)
    assert calls
    torch.testing.assert_close(y[:2], x[:2] @ a[1, 0].T)
    assert torch.all(y[2:] == 0)


SLICES = (96, 32, 32)  # a q/k/v projection: three slices, one shrink matmul between them


def wrapper(lora_ids: list[int], is_prefill: bool, update_metadata):
    """A CPU punica wrapper set up for a step whose tokens use these LoRA ids (0: none; ids 1-3 in
    slots 0-2, the last slot empty)."""
    from vllm.lora.layers.utils import LoRAMapping
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    punica = PunicaWrapperCPU(64, 8, "cpu")
    update_metadata(punica, LoRAMapping(lora_ids, lora_ids, is_prefill), [1, 2, 3, None], SLOTS, 1000)
    return punica


@pytest.mark.parametrize("is_prefill", [False, True])
@pytest.mark.parametrize("lora_ids", [[1] * 6, [0] * 6, [2, 2, 3, 0, 3, 1], [0, 0, 3, 3, 3, 3]])
def test_fused_add_lora_linear_matches_vllms(lora_ids, is_prefill, monkeypatch):
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    # vLLM's own methods, also where vLLM loaded the plugin in this process already (any engine
    # config built here does), which put ours on the class and kept vLLM's in lora_ops._vllm
    vllm_update_metadata = lora_ops._vllm.update_metadata or PunicaWrapperCPU.update_metadata
    vllm_add_lora_linear = lora_ops._vllm.add_lora_linear or PunicaWrapperCPU.add_lora_linear
    assert vllm_add_lora_linear is not lora_ops.add_lora_linear
    monkeypatch.setattr(lora_ops, "_vllm", lora_ops._Originals())
    lora_ops._vllm.update_metadata = vllm_update_metadata
    theirs_wrapper = wrapper(lora_ids, is_prefill, vllm_update_metadata)
    ours_wrapper = wrapper(lora_ids, is_prefill, lora_ops.update_metadata)
    torch.manual_seed(0)
    x = torch.randn(len(lora_ids), WIDTH, dtype=torch.bfloat16)
    a = tuple(stacked(RANK, WIDTH).to(torch.bfloat16) for _ in SLICES)
    b = tuple(stacked(size, RANK).to(torch.bfloat16) for size in SLICES)
    y = torch.randn(len(lora_ids), sum(SLICES), dtype=torch.bfloat16)
    for _ in ("as loaded", "after new weights in slot 2"):
        theirs, ours = y.clone(), y.clone()
        vllm_add_lora_linear(theirs_wrapper, theirs, x, a, b, 0.5, SLICES)
        lora_ops.add_lora_linear(ours_wrapper, ours, x, a, b, 0.5, SLICES)
        torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)
        for slot_a in a:  # vLLM loads another adapter into slot 2: the fused A must follow
            slot_a[2].copy_(torch.randn_like(slot_a[2]))
