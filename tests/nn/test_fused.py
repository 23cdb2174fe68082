"""The fast RoPE form against the plain one (and against transformers' Llama rotation in bfloat16)."""

from __future__ import annotations

import pytest
import torch

from testtime.nn.fused import (
    apply_rope_native,
    apply_rope_swapped,
    full_rope_tables,
    rms_norm_fused,
    signed_sin_table,
)
from testtime.nn.norm import rms_norm
from testtime.nn.rope import apply_rope, rope_cos_sin, rope_inv_freq


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_rope_equals_the_plain_form(dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 16, dtype=dtype)
    inv_freq, _ = rope_inv_freq(16, theta=10000.0)
    cos, sin = rope_cos_sin(torch.arange(7), inv_freq.to(dtype))
    full_cos, full_sin = full_rope_tables(cos, sin, dtype)
    assert torch.equal(apply_rope_native(x, full_cos, full_sin), apply_rope(x, cos, sin))


def test_native_rope_in_bfloat16_rounds_like_transformers() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(1)
    q = torch.randn(1, 4, 5, 8).to(torch.bfloat16)
    k = torch.randn(1, 2, 5, 8).to(torch.bfloat16)
    inv_freq, _ = rope_inv_freq(8)
    cos, sin = rope_cos_sin(torch.arange(5), inv_freq)
    full_cos, full_sin = full_rope_tables(cos, sin, torch.bfloat16)
    want_q, want_k = apply_rotary_pos_emb(q, k, full_cos[None], full_sin[None])
    assert torch.equal(apply_rope_native(q, full_cos, full_sin), want_q)
    assert torch.equal(apply_rope_native(k, full_cos, full_sin), want_k)
    # The plain form (float32 inside) differs from it by bfloat16 rounding only.
    plain = apply_rope(q, cos, sin)
    assert torch.allclose(plain.float(), want_q.float(), atol=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_swapped_rope_equals_the_native_form_bit_for_bit(dtype) -> None:
    torch.manual_seed(2)
    x = torch.randn(3, 12, 64).to(dtype)  # [tokens, heads, D], as the engine's packed forward rotates
    inv_freq, _ = rope_inv_freq(64, theta=10000.0)
    cos, sin = rope_cos_sin(torch.tensor([0, 5, 700]), inv_freq)
    full_cos, full_sin = full_rope_tables(cos, sin, dtype)
    full_cos, full_sin = full_cos[:, None], full_sin[:, None]
    want = apply_rope_native(x, full_cos, full_sin)
    got = apply_rope_swapped(x, full_cos, signed_sin_table(full_sin))
    assert got.dtype == dtype
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 8, 37])
def test_fused_rms_norm_equals_the_plain_form_bit_for_bit(dtype, rows) -> None:
    torch.manual_seed(3)
    x = (torch.randn(rows, 576) * 3).to(dtype)
    weight = (torch.randn(576) * 0.5 + 1).to(dtype)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    want = rms_norm(x, weight, eps=1e-5)
    got = rms_norm_fused(x, weight.to(compute), eps=1e-5)
    assert got.dtype == dtype
    assert torch.equal(got, want)
