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
"""

from __future__ import annotations

import os

import torch

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


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    out = _grouped(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if out is None or (out is not NO_LORA and out.shape[0] != output_tensor.shape[0]):
        return _original("bgmv_expand_slice")(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset,
                                       slice_size, add_inputs)
    if out is NO_LORA:
        if not add_inputs:
            output_tensor[:, slice_offset: slice_offset + slice_size] = 0
    elif add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += out
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = out


class _Originals:
    """vLLM's own ops, kept for the shapes the grouped ops do not handle."""

    bgmv_shrink = bgmv_expand = bgmv_expand_slice = None


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
