"""Faster LoRA ops for vLLM's CPU backend: one matmul per adapter in the batch, not a weight copy per token.

vLLM 0.32's CPU LoRA path (`vllm.lora.ops.torch_ops`, used by `PunicaWrapperCPU`) computes every
LoRA product as `einsum("bi,boi->bo", x, W[indices])`: it gathers a full (rank × width) copy of the
adapter's weights for every token of the batch, in every LoRA layer, at every step. And in decode it
does so even for tokens without an adapter (index -1 selects the last, empty slot), so base requests
on a LoRA-enabled engine pay it too. Measured on 2 cores (32 tokens, width 256, rank 16) the
per-token gather took 140 µs where one matmul per adapter takes 42 µs.

These ops compute the same products grouped by adapter: for each adapter index present, one
`x[rows] @ W[index].T`; rows with index -1 (no adapter: vLLM's GPU kernels skip them too) get no
LoRA term. `register()` swaps them into vLLM's CPU wrapper; it is a vLLM general plugin (entry
point `vllm.general_plugins` in pyproject.toml), so it runs in the engine-core process, where the
model runs. `STAGECHAT_FAST_LORA_OPS=0` keeps vLLM's own ops. This module knows tensors and vLLM's
op signatures; nothing about stages or serving.

Every LoRA projection (q/k/v, o, gate/up, down in each layer) goes through the wrapper's
`add_lora_linear`, which vLLM runs as one shrink and one expand per slice: 28 + 28 op calls a step
for four layers, each finding the batch's adapters again (`torch.unique`, a host sync). Eager Python
is what a step costs here, because vLLM's CPU platform turns torch.compile off whenever LoRA is
enabled. So the wrapper's `add_lora_linear` is replaced too: the adapters present (and their rows)
are found once a step, in `update_metadata`, and a projection's term is two matmuls per adapter
for all its slices together, against the slices' A matrices side by side and their B matrices
block-diagonal (built once per adapter slot, rebuilt when vLLM writes new weights into the slot).
"""

from __future__ import annotations

import os

import torch
from torch.utils.weak import WeakTensorKeyDictionary

ENV = "STAGECHAT_FAST_LORA_OPS"
DEFAULT = "1"  # on: tests/server/test_lora_ops.py checks them against vLLM's ops


NO_LORA = object()  # what `_grouped` returns for a batch in which no row has an adapter


def _weights(stacked: torch.Tensor) -> torch.Tensor:
    return stacked.squeeze(1) if stacked.dim() == 4 else stacked  # (slots, out, in)


def _grouped(inputs: torch.Tensor, stacked: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype):
    """(rows, out): row r is inputs[r] @ W[indices[r]].T, zero where indices[r] < 0; NO_LORA when
    every row is < 0; None when the shapes are not the plain one-index-per-row case (the caller
    then uses vLLM's op)."""
    if inputs.shape[0] != indices.shape[0]:
        return None
    weights = _weights(stacked)
    present = torch.unique(indices).tolist()
    if present == [-1]:
        return NO_LORA  # a batch without adapters: no LoRA term at all
    x = inputs.to(dtype)
    if len(present) == 1:  # the common case: one adapter for the whole batch
        return x @ weights[present[0]].to(dtype).T
    out = torch.zeros(x.shape[0], weights.shape[1], dtype=dtype, device=x.device)
    for index in present:
        if index < 0:
            continue
        rows = indices == index
        out[rows] = x[rows] @ weights[index].to(dtype).T
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    out = _grouped(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    if out is None:
        return _original("bgmv_shrink")(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling)
    if out is NO_LORA:
        output_tensor[:, : _weights(lora_a_weights).shape[1]] = 0
    else:
        output_tensor[:, : out.shape[1]] = scaling * out


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    out = _grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if out is None or (out is not NO_LORA and out.shape[0] != output_tensor.shape[0]):
        return _original("bgmv_expand")(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs)
    common = min(_weights(lora_b_weights).shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if out is NO_LORA:
        if not add_inputs:
            output_tensor[:, :common] = 0
    elif add_inputs:
        output_tensor[:, :common] += out[:, :common]
    else:
        output_tensor[:, :common] = out[:, :common]


def bgmv_expand_slice(
    inputs,
    lora_b_weights,
    output_tensor,
    lora_indices_tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
):
    out = _grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if out is None or (out is not NO_LORA and out.shape[0] != output_tensor.shape[0]):
        return _original("bgmv_expand_slice")(
            inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size, add_inputs
        )
    if out is NO_LORA:
        if not add_inputs:
            output_tensor[:, slice_offset : slice_offset + slice_size] = 0
    elif add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += out
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = out


def _step_groups(indices: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
    """(adapter slot, its rows; None for every row) for each adapter in the step; [] for none."""
    present = torch.unique(indices).tolist()
    if present == [-1]:
        return []
    if len(present) == 1:
        return [(present[0], None)]
    return [(index, torch.nonzero(indices == index).squeeze(1)) for index in present if index >= 0]


def update_metadata(self, *args, **kwargs):
    _vllm.update_metadata(self, *args, **kwargs)
    self.stagechat_groups = _step_groups(self.token_lora_indices)


_fused = WeakTensorKeyDictionary()  # a layer's first stacked A -> {slot: (weight versions, A, B)}


def _fused_weights(lora_a_stacked, lora_b_stacked, slot: int, dtype: torch.dtype):
    """The slot's LoRA weights for all of a projection's slices at once: A (in, slices × rank), the
    slices' A matrices side by side, and B (slices × rank, out), their B matrices block-diagonal, so
    that x @ A @ B is every slice's term in its columns of the output."""
    versions = tuple(w._version for w in (*lora_a_stacked, *lora_b_stacked))  # bumped as vLLM loads a slot
    cached = _fused.setdefault(lora_a_stacked[0], {}).get(slot)
    if cached is None or cached[0] != versions:
        a = torch.cat([_weights(w)[slot] for w in lora_a_stacked]).T.to(dtype).contiguous()
        b = torch.block_diag(*(_weights(w)[slot].T for w in lora_b_stacked)).to(dtype)
        cached = _fused[lora_a_stacked[0]][slot] = versions, a, b
    return cached[1], cached[2]


def add_lora_linear(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, *, buffer=None, **kwargs):
    """y += scale · x @ A[slot] @ B[slot] for every slice, two matmuls per adapter in the step (vLLM
    runs a shrink and an expand per slice); rows without an adapter get no term."""
    groups = getattr(self, "stagechat_groups", None)
    x = x.view(-1, x.shape[-1])
    out = y.view(-1, y.shape[-1])
    if groups is None or x.shape[0] != self.token_lora_indices.shape[0] or sum(output_slices) != out.shape[1]:
        return _vllm.add_lora_linear(
            self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer=buffer, **kwargs
        )
    for slot, rows in groups:
        a, b = _fused_weights(lora_a_stacked, lora_b_stacked, slot, y.dtype)
        if rows is None:
            out.addmm_(x.to(a.dtype) @ a, b, alpha=scale)
        else:
            out.index_add_(0, rows, x.index_select(0, rows).to(a.dtype) @ a @ b, alpha=scale)
    return y


class _Originals:
    """vLLM's own ops and wrapper methods, kept for the shapes the grouped ones do not handle."""

    bgmv_shrink = bgmv_expand = bgmv_expand_slice = update_metadata = add_lora_linear = None


_vllm = _Originals()


def _original(name: str):
    from vllm.lora.ops.torch_ops import lora_ops

    return getattr(_vllm, name) or getattr(lora_ops, name)  # before register(), lora_ops has vLLM's own


def register() -> None:
    """vLLM general plugin: use the grouped ops in vLLM's CPU LoRA wrapper (a no-op elsewhere)."""
    if os.environ.get(ENV, DEFAULT) in ("0", "false", "no") or _vllm.bgmv_shrink is not None:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
        setattr(_vllm, name, getattr(lora_ops, name))
        # lora_ops' sgmv_* (prefill) call these through lora_ops' globals; the wrapper imported its own names.
        setattr(lora_ops, name, globals()[name])
        setattr(punica_cpu, name, globals()[name])
    for name in ("update_metadata", "add_lora_linear"):
        setattr(_vllm, name, getattr(punica_cpu.PunicaWrapperCPU, name))
        setattr(punica_cpu.PunicaWrapperCPU, name, globals()[name])
